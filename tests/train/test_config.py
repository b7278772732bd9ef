"""Training config: YAML -> validated TrainConfig -> --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from skinedge.pipelines.quickstart import default_config
from skinedge.train.config import TrainConfig, load_train_config
from skinedge.utils.config import apply_overrides, dump_config


def write_yaml(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def test_yaml_then_overrides(tmp_path) -> None:
    path = write_yaml(tmp_path / "c.yaml", {"epochs": 4, "optim": {"lr": 0.01, "optimizer": "sgd"}})
    cfg = load_train_config(path, [
        "optim.lr=3.0e-4", "batch_size=8", "augment.crop_scale=[0.5, 0.9]",
        "model.pretrained=none", "data.manifest=/tmp/m.json", "amp=false", "threads=null",
    ])
    assert cfg.epochs == 4  # from the file
    assert cfg.optim.optimizer == "sgd"  # from the file, untouched by the override of lr
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.batch_size == 8 and isinstance(cfg.batch_size, int)
    assert cfg.augment.crop_scale == (0.5, 0.9)
    assert cfg.model.pretrained == "none"
    assert cfg.data.manifest == Path("/tmp/m.json")
    assert cfg.amp is False and cfg.threads is None


def test_exponent_without_a_dot_is_still_a_number() -> None:
    # YAML 1.1 reads "3e-4" as a string; the float field must still accept it.
    assert load_train_config(None, ["optim.lr=3e-4"]).optim.lr == pytest.approx(3e-4)


def test_overrides_create_sections() -> None:
    assert apply_overrides({}, ["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


@pytest.mark.parametrize("override, field", [
    ("optim.lrr=1", "optim.lrr"),  # unknown key
    ("nonsense=1", "nonsense"),  # unknown top-level key
    ("optim.lr=-1", "optim.lr"),  # out of range
    ("epochs=many", "epochs"),  # not a number
    ("sampler=weighted", "sampler"),  # not a choice
    ("model.drop_rate=1.5", "model.drop_rate"),
])
def test_bad_override_names_the_field(override: str, field: str) -> None:
    with pytest.raises(ValueError, match="invalid training config") as info:
        load_train_config(None, [override])
    assert f"\n  {field}: " in str(info.value)
    assert "errors.pydantic.dev" not in str(info.value)


def test_an_unknown_key_lists_the_keys_of_its_section() -> None:
    with pytest.raises(ValueError) as info:
        load_train_config(None, ["optim.lrr=1"])
    assert "optim.lrr: unknown key; optim takes optimizer, lr, weight_decay" in str(info.value)


def test_override_without_equals_or_into_a_value_raises() -> None:
    with pytest.raises(ValueError, match="section.key=value"):
        load_train_config(None, ["epochs"])
    with pytest.raises(ValueError, match="epochs is not a section"):
        load_train_config(None, ["epochs=3", "epochs.x=1"])


def test_bad_value_in_file_names_the_file_and_field(tmp_path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", {"loss": {"kind": "hinge"}})
    with pytest.raises(ValueError, match=r"bad\.yaml") as info:
        load_train_config(path)
    assert "loss.kind" in str(info.value)


def test_unreadable_yaml_raises_value_error(tmp_path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("optim: [unclosed\n")
    with pytest.raises(ValueError, match="cannot read config"):
        load_train_config(path)
    with pytest.raises(ValueError, match="cannot read config"):
        load_train_config(tmp_path / "absent.yaml")


def test_packaged_config_validates() -> None:
    cfg = load_train_config(default_config())
    assert cfg.model.arch == "tf_efficientnet_lite0"
    assert cfg.model.pretrained == "imagenet"
    assert cfg.preprocess.input_size == 224
    assert cfg.epochs >= 1


def test_dumped_config_reloads_identically(tmp_path) -> None:
    cfg = load_train_config(default_config(), ["data.manifest=/x/manifest.json"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert load_train_config(path) == cfg
    assert isinstance(cfg, TrainConfig)


def test_imagenet_weights_that_do_not_ship_are_refused_when_the_config_is_read(tmp_path):
    from skinedge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"no offline ImageNet weights for 'tf_efficientnet_b4'"
                                          r".*model\.pretrained=PATH"):
        load_train_config(default_config(), ["model.arch=tf_efficientnet_b4"])
    weights = tmp_path / "b4.safetensors"
    weights.write_bytes(b"")  # only its existence is checked here; loading it comes later
    for pretrained in ("none", str(weights)):
        cfg = load_train_config(default_config(), ["model.arch=tf_efficientnet_b4",
                                                   f"model.pretrained={pretrained}"])
        assert cfg.model.arch == "tf_efficientnet_b4"
