"""Validation of the config dataclasses: every bad value is refused with a message naming field, value and rule."""

from __future__ import annotations

import math
import pathlib

import pytest

import trainkeep as tk
from trainkeep._internal.core.config import default_run_name


def _assert_refused(exc: pytest.ExceptionInfo, builtin: type, *fragments: str) -> None:
    assert isinstance(exc.value, tk.TrainkeepError)
    assert isinstance(exc.value, builtin), f"{type(exc.value).__name__} is not a {builtin.__name__}"
    for fragment in fragments:
        assert fragment in str(exc.value), f"{fragment!r} not in {str(exc.value)!r}"


# ---------------------------------------------------------------------------------------------- CheckpointConfig

NUM_TO_KEEP_RULE = "None or an integer >= 1"


@pytest.mark.parametrize(
    ("value", "builtin", "shown"),
    [
        (0, ValueError, "0"),
        (-1, ValueError, "-1"),
        (True, TypeError, "True"),
        (False, TypeError, "False"),
        (1.5, TypeError, "1.5"),
        (2.0, TypeError, "2.0"),
        ("2", TypeError, "'2'"),
        ([2], TypeError, "[2]"),
    ],
)
def test_num_to_keep_bad_values(value: object, builtin: type, shown: str) -> None:
    with pytest.raises(builtin) as exc:
        tk.CheckpointConfig(num_to_keep=value)  # type: ignore[arg-type]
    _assert_refused(exc, builtin, "num_to_keep", NUM_TO_KEEP_RULE, shown)


@pytest.mark.parametrize("value", ["MAX", "Min", "avg", "", " max", None, 1])
def test_score_order_is_exactly_max_or_min(value: object) -> None:
    with pytest.raises(ValueError) as exc:
        tk.CheckpointConfig(checkpoint_score_order=value)  # type: ignore[arg-type]
    _assert_refused(exc, ValueError, "checkpoint_score_order", "'max' or 'min'", repr(value))


@pytest.mark.parametrize(
    ("value", "builtin", "shown"),
    [(-1, ValueError, "-1"), (1.0, TypeError, "1.0"), (True, TypeError, "True"), ("5", TypeError, "'5'"),
     (None, TypeError, "None")],
)
def test_checkpoint_frequency_bad_values(value: object, builtin: type, shown: str) -> None:
    with pytest.raises(builtin) as exc:
        tk.CheckpointConfig(checkpoint_frequency=value)  # type: ignore[arg-type]
    _assert_refused(exc, builtin, "checkpoint_frequency", "integer >= 0", shown)


@pytest.mark.parametrize("value", [1, 0, "yes", "True", 1.0])
def test_checkpoint_at_end_must_be_bool_or_none(value: object) -> None:
    with pytest.raises(TypeError) as exc:
        tk.CheckpointConfig(checkpoint_at_end=value)  # type: ignore[arg-type]
    _assert_refused(exc, TypeError, "checkpoint_at_end", "True, False or None", repr(value))


@pytest.mark.parametrize(("value", "builtin"), [("", ValueError), (3, TypeError), (b"loss", TypeError),
                                                 (["loss"], TypeError)])
def test_score_attribute_none_or_non_empty_str(value: object, builtin: type) -> None:
    with pytest.raises(builtin) as exc:
        tk.CheckpointConfig(checkpoint_score_attribute=value)  # type: ignore[arg-type]
    _assert_refused(exc, builtin, "checkpoint_score_attribute", "non-empty string", repr(value))


def test_valid_checkpoint_configs_and_positional_order() -> None:
    config = tk.CheckpointConfig(2, "loss", "min")
    assert (config.num_to_keep, config.checkpoint_score_attribute, config.checkpoint_score_order) == (2, "loss", "min")
    assert tk.CheckpointConfig(None, None, "max", 5, True).checkpoint_frequency == 5
    assert tk.CheckpointConfig(checkpoint_at_end=False).checkpoint_at_end is False
    default = tk.CheckpointConfig()
    assert default.to_dict() == {"num_to_keep": None, "checkpoint_score_attribute": None,
                                 "checkpoint_score_order": "max", "checkpoint_frequency": 0,
                                 "checkpoint_at_end": None}


def test_checkpoint_config_round_trips_and_from_dict_validates() -> None:
    config = tk.CheckpointConfig(3, "val/acc", "max", 2, False)
    assert tk.CheckpointConfig.from_dict({**config.to_dict(), "future_field": 1}) == config
    with pytest.raises(ValueError, match="num_to_keep"):
        tk.CheckpointConfig.from_dict({"num_to_keep": 0})


# ---------------------------------------------------------------------------------------------- FailureConfig


@pytest.mark.parametrize(("value", "builtin"), [(-2, ValueError), (1.0, TypeError), (True, TypeError),
                                                 ("3", TypeError), (None, TypeError)])
def test_failure_config_bad_values(value: object, builtin: type) -> None:
    with pytest.raises(builtin) as exc:
        tk.FailureConfig(max_failures=value)  # type: ignore[arg-type]
    _assert_refused(exc, builtin, "max_failures", "integer >= -1", repr(value))


def test_failure_config_accepts_unlimited_and_counts() -> None:
    assert tk.FailureConfig(-1).max_failures == -1
    assert tk.FailureConfig(3).max_failures == 3


# ---------------------------------------------------------------------------------------------- ScalingConfig


@pytest.mark.parametrize(
    ("kwargs", "builtin", "fragments"),
    [
        ({"num_workers": 0}, ValueError, ("num_workers", "integer >= 1", "0")),
        ({"num_workers": 2.0}, TypeError, ("num_workers", "integer >= 1", "2.0")),
        ({"num_workers": True}, TypeError, ("num_workers", "True")),
        ({"use_gpu": 1}, TypeError, ("use_gpu", "True or False", "1")),
        ({"use_gpu": "yes"}, TypeError, ("use_gpu", "'yes'")),
        ({"resources_per_worker": [("CPU", 1)]}, TypeError, ("resources_per_worker", "dict")),
        ({"resources_per_worker": {"CPU": -1}}, ValueError, ("resources_per_worker", ">= 0", "'CPU': -1")),
        ({"resources_per_worker": {"CPU": "2"}}, ValueError, ("resources_per_worker", "'CPU': '2'")),
        ({"resources_per_worker": {1: 2}}, ValueError, ("resources_per_worker", "1: 2")),
        ({"resources_per_worker": {"GPU": math.nan}}, ValueError, ("resources_per_worker", "nan")),
        ({"resources_per_worker": {"GPU": True}}, ValueError, ("resources_per_worker", "True")),
        ({"placement_strategy": "pack"}, ValueError, ("placement_strategy", "'pack'", "STRICT_SPREAD")),
        ({"placement_strategy": None}, ValueError, ("placement_strategy", "None", "'PACK'")),
    ],
)
def test_scaling_config_bad_values(kwargs: dict, builtin: type, fragments: tuple[str, ...]) -> None:
    with pytest.raises(builtin) as exc:
        tk.ScalingConfig(**kwargs)
    _assert_refused(exc, builtin, *fragments)


def test_scaling_config_valid() -> None:
    config = tk.ScalingConfig(4, True, {"CPU": 2, "GPU": 0.5})
    assert (config.num_workers, config.use_gpu, config.resources_per_worker) == (4, True, {"CPU": 2, "GPU": 0.5})


# ---------------------------------------------------------------------------------------------- RunConfig


@pytest.mark.parametrize(
    ("kwargs", "builtin", "fragments"),
    [
        ({"name": "a/b"}, ValueError, ("RunConfig.name", "'a/b'", "separator")),
        ({"name": ".."}, ValueError, ("RunConfig.name", "'..'")),
        ({"name": ""}, ValueError, ("RunConfig.name", "empty")),
        ({"name": 7}, ValueError, ("RunConfig.name", "7", "string")),
        ({"storage_path": 7}, TypeError, ("storage_path", "7", "path or a URL")),
        ({"storage_path": ""}, ValueError, ("storage_path", "''")),
        ({"storage_filesystem": "s3"}, TypeError, ("storage_filesystem", "'s3'", "fsspec filesystem")),
        ({"checkpoint_config": {"num_to_keep": 2}}, TypeError, ("checkpoint_config", "CheckpointConfig", "dict")),
        ({"failure_config": 3}, TypeError, ("failure_config", "FailureConfig", "3")),
        ({"report_timeout_s": 0}, ValueError, ("report_timeout_s", "> 0", "0")),
        ({"report_timeout_s": math.nan}, ValueError, ("report_timeout_s", "nan")),
        ({"report_timeout_s": True}, ValueError, ("report_timeout_s", "True")),
        ({"callbacks": [object()]}, ValueError, ("callbacks", "UserCallback", "callbacks[0]")),
        ({"callbacks": tk.UserCallback()}, ValueError, ("callbacks", "list of trainkeep.UserCallback")),
    ],
)
def test_run_config_bad_values(kwargs: dict, builtin: type, fragments: tuple[str, ...]) -> None:
    with pytest.raises(builtin) as exc:
        tk.RunConfig(**kwargs)
    _assert_refused(exc, builtin, *fragments)


def test_run_config_defaults_and_path_normalisation(tmp_path: pathlib.Path) -> None:
    import fsspec

    assert tk.RunConfig(storage_filesystem=fsspec.filesystem("memory")).storage_filesystem is not None
    config = tk.RunConfig(name="exp", storage_path=tmp_path)
    assert config.storage_path == str(tmp_path)
    assert config.checkpoint_config == tk.CheckpointConfig()
    assert config.failure_config == tk.FailureConfig()
    assert tk.RunConfig().name is None


def test_default_run_name_is_a_valid_timestamped_name() -> None:
    import datetime as dt

    name = default_run_name(dt.datetime(2026, 11, 26, 22, 41, 43))
    assert name == "trainkeep_run-2026-11-26_22-41-43"
    assert tk.RunConfig(name=name).name == name


# ---------------------------------------------------------------------------------------------- Ray's extras


@pytest.mark.parametrize(("config", "total"), [
    (tk.ScalingConfig(), {"CPU": 1.0}),
    (tk.ScalingConfig(num_workers=2, use_gpu=True), {"GPU": 2.0}),
    (tk.ScalingConfig(num_workers=3, resources_per_worker={"CPU": 2, "GPU": 0}), {"CPU": 6.0}),
    (tk.ScalingConfig(num_workers=2, use_gpu=True, resources_per_worker={"CPU": 4}), {"CPU": 8.0, "GPU": 2.0}),
    (tk.ScalingConfig(num_workers=4, use_gpu=True, resources_per_worker={"GPU": 0.5, "mem": 1}),
     {"GPU": 2.0, "mem": 4.0}),
])
def test_total_resources_counts_as_ray_does(config: tk.ScalingConfig, total: dict[str, float]) -> None:
    assert config.total_resources == total


@pytest.mark.parametrize("strategy", ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"])
def test_placement_strategies_of_ray_are_accepted(strategy: str) -> None:
    assert tk.ScalingConfig(placement_strategy=strategy).placement_strategy == strategy
    assert tk.ScalingConfig().placement_strategy == "PACK"


def test_a_default_config_s_repr_is_short() -> None:
    for config in (tk.RunConfig(), tk.ScalingConfig(), tk.CheckpointConfig(), tk.FailureConfig()):
        assert repr(config) == f"{type(config).__name__}()"
        assert len(repr(config)) <= 120  # Ray's own test caps it there


@pytest.mark.parametrize("config", [
    tk.RunConfig(name="exp", storage_path="/tmp/runs", report_timeout_s=5.0,
                 checkpoint_config=tk.CheckpointConfig(2, "val/loss", "min"),
                 failure_config=tk.FailureConfig(max_failures=-1)),
    tk.ScalingConfig(num_workers=4, use_gpu=True, resources_per_worker={"CPU": 2}, placement_strategy="SPREAD"),
    tk.CheckpointConfig(num_to_keep=1, checkpoint_frequency=3, checkpoint_at_end=False),
    tk.FailureConfig(3),
])
def test_repr_shows_only_changed_fields_and_evaluates_back(config: object) -> None:
    text = repr(config)
    namespace = {name: getattr(tk, name) for name in ("RunConfig", "ScalingConfig", "CheckpointConfig", "FailureConfig")}
    assert eval(text, namespace) == config
    assert "=None" not in text and "max_failures=0" not in text
    assert repr(tk.ScalingConfig(num_workers=2)) == "ScalingConfig(num_workers=2)"
    assert repr(tk.RunConfig(name="exp")) == "RunConfig(name='exp')"

