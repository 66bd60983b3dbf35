"""Config parsing and validation: all errors at once, unknown keys with suggestions, round trips."""

import pytest
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
