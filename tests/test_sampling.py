"""The device-side batch sampler: balanced, reproducible, resumable, label-free."""

import torch

from da_train.sampling import EpochSampler


def draw(sampler, batches):
    return torch.cat([sampler() for _ in range(batches)])


def test_every_index_exactly_once_per_epoch():
    sampler = EpochSampler(100, 10, "cpu", seed=3)
    first, second = draw(sampler, 10), draw(sampler, 10)
    assert sorted(first.tolist()) == list(range(100))
    assert sorted(second.tolist()) == list(range(100))
    assert not torch.equal(first, second)  # a new shuffle each epoch


def test_batches_that_cross_an_epoch_boundary_stay_balanced():
    sampler = EpochSampler(10, 4, "cpu", seed=0)
    counts = torch.bincount(draw(sampler, 25), minlength=10)  # 100 draws = 10 epochs
    assert counts.tolist() == [10] * 10


def test_batch_larger_than_dataset():
    sampler = EpochSampler(3, 8, "cpu", seed=0)
    batch = sampler()
    assert len(batch) == 8 and set(batch.tolist()) == {0, 1, 2}


def test_reproducible_for_a_seed_and_different_across_seeds_and_streams():
    a, b = EpochSampler(50, 7, "cpu", seed=1), EpochSampler(50, 7, "cpu", seed=1)
    assert torch.equal(draw(a, 20), draw(b, 20))
    c = EpochSampler(50, 7, "cpu", seed=2)
    d = EpochSampler(50, 7, "cpu", seed=1, stream=1)
    ref = draw(EpochSampler(50, 7, "cpu", seed=1), 20)
    assert not torch.equal(draw(c, 20), ref) and not torch.equal(draw(d, 20), ref)


def test_state_dict_resumes_the_exact_sequence():
    sampler = EpochSampler(37, 5, "cpu", seed=9)
    draw(sampler, 11)
    state = sampler.state_dict()
    expected = draw(sampler, 30)
    resumed = EpochSampler(37, 5, "cpu", seed=0)
    resumed.load_state_dict(state)
    assert torch.equal(draw(resumed, 30), expected)


def test_the_sampler_cannot_read_labels():
    """Its inputs are a size, a batch size, a device and seeds (no data, no labels), its state
    is five integers, and the trainer draws the same batches whatever the target labels."""
    import inspect

    from toy import moons_pair, toy_config, toy_trainer

    assert list(inspect.signature(EpochSampler).parameters) == [
        "n", "batch_size", "device", "seed", "stream"]
    sampler = EpochSampler(20, 4, "cpu", seed=0)
    assert all(isinstance(v, int) for v in sampler.state_dict().values())
    draws = []
    for flip in (False, True):
        pair = moons_pair()
        pair.target_train_labels = torch.randint(0, 2, (600,), generator=torch.Generator()
                                                 .manual_seed(int(flip)))
        trainer = toy_trainer(toy_config("target_only", steps=5), "unused", pair)
        draws.append(torch.cat([trainer.target_sampler() for _ in range(5)]))
    assert torch.equal(draws[0], draws[1])
