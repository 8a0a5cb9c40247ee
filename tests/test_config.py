import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ValidationError
from toy import compose_config

from da_train.config import ConfigError, validate
from da_train.methods import METHODS

DATA = ["mnist_mnistm"]


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("data", DATA)
def test_every_method_and_data_composes(method, data):
    cfg = compose_config([f"method={method}", f"data={data}"])
    assert cfg.method.name == method and cfg.data.name == data
    validate(cfg)
    assert cfg.trainer.batch_size == 64 and cfg.optim.momentum == 0.9


def test_data_root_follows_env(monkeypatch):
    monkeypatch.setenv("DA_DATA_ROOT", "/somewhere/data")
    assert compose_config([]).data.root == "/somewhere/data"
    monkeypatch.delenv("DA_DATA_ROOT")
    assert compose_config([]).data.root == "data"


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigCompositionException, match=r"override method\.weight=abc") as err:
        compose_config(["method.weight=abc"])
    assert isinstance(err.value.__cause__, ValidationError)
    assert "'abc' of type 'str' could not be converted to Float" in str(err.value.__cause__)


def test_misspelt_key_is_rejected():
    with pytest.raises(ConfigCompositionException,
                       match=r"Could not override 'trainer\.step'") as err:
        compose_config(["trainer.step=5"])
    assert isinstance(err.value.__cause__, ConfigAttributeError)
    assert "Key 'step' not in 'TrainerConfig'" in str(err.value.__cause__)


def test_unknown_method_lists_choices():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="Could not find 'method/nope'") as err:
        compose_config(["method=nope"])
    listed = str(err.value).split("Available options in 'method':", 1)[1]
    assert {"dann", "source_only"} <= {line.strip() for line in listed.splitlines()}


@pytest.mark.parametrize("override,key", [
    ("method.weight=-1", "method.weight"), ("trainer.steps=0", "trainer.steps"),
    ("trainer.batch_size=1", "trainer.batch_size"), ("trainer.device=tpu", "trainer.device"),
])
def test_range_validation_names_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_config([override]))


def test_step_schedule_without_a_step_length_says_which_key_to_set():
    with pytest.raises(ConfigError, match=r"optim.step_every is 0.*optim.step_every=4685"):
        validate(compose_config(["optim.schedule=step"]))
    validate(compose_config(["optim.schedule=step", "optim.step_every=4685"]))


def test_main_command_is_the_dann_preset_with_instance_input_and_20000_steps():
    """The README's main command is the configuration whose 5 seeds docs/results.md reports
    as `experiment=dann_mnist_mnistm data.normalize=instance trainer.steps=20000`."""
    from omegaconf import OmegaConf
    main = compose_config(["method=dann", "data=mnist_mnistm"])
    preset = compose_config(["experiment=dann_mnist_mnistm", "data.normalize=instance",
                             "trainer.steps=20000"])
    assert main.trainer.steps == 20000 and main.data.normalize == "instance"
    assert OmegaConf.to_container(main) == OmegaConf.to_container(preset)


def test_pair_training_length_yields_to_presets_and_the_command_line():
    from pathlib import Path

    from da_train.conf import __file__ as conf_init
    folder = Path(conf_init).parent / "experiment"
    presets = sorted(p.stem for p in folder.glob("*_mnist_mnistm.yaml"))
    assert len(presets) >= 10
    for name in presets:
        if not name.startswith("adda"):  # ADDA's stages have their own lengths
            assert compose_config([f"experiment={name}"]).trainer.steps == 10000, name
    assert compose_config(["data=mnist_mnistm", "trainer.steps=300"]).trainer.steps == 300
    assert compose_config(["data=mnist_usps"]).trainer.steps == 10000


CDAN_CODE = ("method.entropy=true data.source.limit=0 data.target.limit=0 trainer.steps=46850 "
             "optim.schedule=step optim.weight_decay=0.0005 method.gamma=46.85 "
             "method.max_dim=5120").split()


@pytest.mark.parametrize("pair,step_every", [("mnist_usps", 4685), ("usps_mnist", 5622)])
def test_cdan_code_presets_are_the_cdan_preset_with_the_code_protocols_overrides(pair,
                                                                                 step_every):
    """experiment=cdan_code_<pair> composes exactly what the seed-0 runs of
    docs/results-notes.md gave on the command line (5 or 6 epochs of 937 steps per lr cut)."""
    from omegaconf import OmegaConf
    preset = compose_config([f"experiment=cdan_code_{pair}"])
    spelt = compose_config([f"experiment=cdan_{pair}", *CDAN_CODE,
                            f"optim.step_every={step_every}"])
    validate(preset)
    assert OmegaConf.to_container(preset, resolve=True) == \
        OmegaConf.to_container(spelt, resolve=True)


def test_the_dann_paper_protocol_is_the_papers_input_and_length_over_the_pairs_defaults():
    """conf/protocol/dann_paper.yaml: what the *_mnist_mnistm presets of the DANN paper's
    table change in the pair's defaults, and nothing else."""
    from omegaconf import OmegaConf

    from da_train.runtime import flatten
    plain = flatten(OmegaConf.to_container(compose_config(["method=dann"]), resolve=True))
    preset = flatten(OmegaConf.to_container(compose_config(["experiment=dann_mnist_mnistm"]),
                                            resolve=True))
    changed = {k: v for k, v in preset.items() if plain.get(k) != v}
    assert changed == {"data.normalize": "global", "trainer.steps": 10000}
