import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from da_train.config import ConfigError, register_schema, validate
from da_train.methods import METHODS

register_schema()
DATA = ["mnist_mnistm"]


def make(overrides):
    with initialize_config_module(config_module="da_train.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("data", DATA)
def test_every_method_and_data_composes(method, data):
    cfg = make([f"method={method}", f"data={data}"])
    assert cfg.method.name == method and cfg.data.name == data
    validate(cfg)
    assert cfg.trainer.batch_size == 64 and cfg.optim.momentum == 0.9


def test_data_root_follows_env(monkeypatch):
    monkeypatch.setenv("DA_DATA_ROOT", "/somewhere/data")
    assert make([]).data.root == "/somewhere/data"
    monkeypatch.delenv("DA_DATA_ROOT")
    assert make([]).data.root == "data"


def test_wrong_type_is_rejected():
    with pytest.raises((ValidationError, ConfigCompositionException), match="lam"):
        make(["method.lam=abc"])


def test_misspelt_key_is_rejected():
    with pytest.raises((ConfigKeyError, ConfigCompositionException), match="step"):
        make(["trainer.step=5"])


def test_unknown_method_lists_choices():
    with pytest.raises(Exception) as err:
        make(["method=nope"])
    assert "dann" in str(err.value) and "source_only" in str(err.value)


@pytest.mark.parametrize("override,key", [
    ("method.lam=-1", "method.lam"), ("trainer.steps=0", "trainer.steps"),
    ("trainer.batch_size=1", "trainer.batch_size"), ("trainer.device=tpu", "trainer.device"),
])
def test_range_validation_names_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(make([override]))
