"""Config parsing and validation: all errors at once, unknown keys with suggestions, round trips."""

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from replast.config import FinetuneConfig, ReinitConfig, TrainConfig
from replast.errors import ConfigError


def test_round_trip_through_dict():
    cfg = FinetuneConfig(model="efficientnet_lite0", reinit=ReinitConfig(strategy="targeted", fraction=0.3),
                         train=TrainConfig(lr=0.05))
    again = FinetuneConfig.from_dict(cfg.to_dict())
    assert again == cfg


def test_unknown_keys_are_all_listed_with_suggestions():
    with pytest.raises(ConfigError) as info:
        FinetuneConfig.from_dict({"modle": "x", "reinit": {"fracton": 0.1}, "train": {"lr": 0.1}})
    message = str(info.value)
    assert "'modle'" in message and "'model'" in message
    assert "'reinit.fracton'" in message and "'reinit.fraction'" in message


def test_validation_lists_every_error():
    cfg = FinetuneConfig(epochs=0, batch_size=0, reinit=ReinitConfig(fraction=1.5, threshold=-1))
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    message = str(info.value)
    for fragment in ("epochs=0", "batch_size=0", "reinit.fraction=1.5", "reinit.threshold=-1"):
        assert fragment in message


@pytest.mark.parametrize("lr_scale", [float("nan"), float("inf"), 0.0])
def test_lr_scale_must_be_a_finite_number_above_zero(lr_scale):
    with pytest.raises(ConfigError, match=f"reinit.lr_scale={lr_scale}"):
        FinetuneConfig(reinit=ReinitConfig(lr_scale=lr_scale)).validate()


@pytest.mark.parametrize("schedule,ok", [("once", True), ("every:100", True), ("every:0", False),
                                         ("every:x", False), ("sometimes", False)])
def test_schedule_syntax(schedule, ok):
    cfg = FinetuneConfig(reinit=ReinitConfig(schedule=schedule))
    if ok:
        cfg.validate()
    else:
        with pytest.raises(ConfigError, match="schedule"):
            cfg.validate()


@given(fraction=st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=10),
       epochs=st.integers(min_value=-5, max_value=50))
def test_validation_accepts_exactly_the_valid_ranges(fraction, epochs):
    cfg = FinetuneConfig(epochs=epochs, reinit=ReinitConfig(fraction=fraction))
    valid = 0.0 <= fraction <= 1.0 and epochs >= 1
    if valid:
        cfg.validate()
    else:
        with pytest.raises(ConfigError):
            cfg.validate()


@given(st.dictionaries(st.text(min_size=1, max_size=12), st.integers(), max_size=4))
def test_from_dict_never_crashes_on_arbitrary_keys(data):
    try:
        FinetuneConfig.from_dict(data)
    except ConfigError:
        pass


configs = st.builds(
    FinetuneConfig,
    model=st.text(min_size=1, max_size=20),
    epochs=st.integers(-3, 10_000),
    batch_size=st.integers(0, 4096),
    image_size=st.none() | st.integers(1, 1024),
    train_fraction=st.floats(allow_nan=False),
    max_samples=st.none() | st.integers(0, 10**6),
    seed=st.integers(0, 2**63 - 1),
    resume=st.booleans(),
    train=st.builds(TrainConfig, lr=st.none() | st.floats(1e-9, 10.0),
                    mode=st.sampled_from(["finetune", "linear-probe"]), track_plasticity=st.integers(0, 1000)),
    reinit=st.builds(ReinitConfig, strategy=st.text(max_size=20), fraction=st.floats(allow_nan=False),
                     threshold=st.floats(allow_nan=False), exclude=st.lists(st.text(max_size=12), max_size=3),
                     schedule=st.text(max_size=12)),
)


@given(configs)
def test_any_config_round_trips_through_its_yaml_file(cfg):
    """OUT/config.yaml (yaml.safe_dump of to_dict) read back is the same config, valid or not."""
    assert FinetuneConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False))) == cfg


keys = st.text(st.characters(codec="utf-8", exclude_characters=";"), min_size=1, max_size=12)  # "; " joins


@given(top=st.dictionaries(keys, st.integers(), max_size=3), nested=st.dictionaries(keys, st.integers(), max_size=3))
def test_every_unknown_key_is_reported_with_its_path_and_no_known_one(top, nested):
    fields, reinit_fields = FinetuneConfig().to_dict(), ReinitConfig().__dataclass_fields__
    data = {**{k: v for k, v in top.items() if k not in fields}, "epochs": 3,
            "reinit": {**{k: v for k, v in nested.items() if k not in reinit_fields}, "fraction": 0.5}}
    unknown = [k for k in top if k not in fields] + [f"reinit.{k}" for k in nested if k not in reinit_fields]
    if not unknown:
        assert FinetuneConfig.from_dict(data).reinit.fraction == 0.5
        return
    with pytest.raises(ConfigError) as info:
        FinetuneConfig.from_dict(data)
    reported = str(info.value).split("; ")
    assert len(reported) == len(unknown)
    for key, message in zip(unknown, reported, strict=True):
        assert message.startswith(f"unknown key {key!r}")
