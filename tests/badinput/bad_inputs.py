"""The table of bad inputs that test_bad_input_table.py tries, one expected outcome each.

Every row is an action on a :class:`Ctx` (a storage root holding a run of three checkpoints, scores 5, 7 and 6,
kept by ``num_to_keep=2`` on "score", plus a foreign directory) and what must come of it: an exception type and a
fragment of its message, or :data:`ACCEPTED_LAST` (committed, ranked below every finite score). A row that opens
the run gets the run's open CheckpointManager in ``ctx.manager`` before the snapshot is taken.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import trainkeep as tk
from trainkeep.errors import (
    CheckpointExistsError,
    ConfigError,
    ConfigTypeError,
    IncompatibleRunError,
    InvalidCheckpointNameError,
    InvalidMetricsError,
    ScoreTypeError,
    StorageError,
    UnsupportedCheckpointFileError,
)

SCORE = tk.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="score", checkpoint_score_order="max")
NESTED = tk.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val/loss", checkpoint_score_order="min")
ACCEPTED_LAST = None  # the expected "exception" of a row whose input is accepted and ranked last


@dataclass
class Ctx:
    """Where a row acts: everything it may write lies under ``root``."""

    root: Path
    run: Path
    scratch: Path
    manager: tk.CheckpointManager | None = None

    def source(self) -> tk.Checkpoint:
        d = tempfile.mkdtemp(dir=self.scratch)
        Path(d, "model.bin").write_bytes(b"weights" * 100)
        return tk.Checkpoint.from_directory(d)

    def report(self, metrics: Any, checkpoint: bool = True, name: Any = None) -> tk.Checkpoint | None:
        assert self.manager is not None
        return self.manager.report(metrics, self.source() if checkpoint else None, name)


@dataclass(frozen=True)
class Case:
    id: str
    act: Callable[[Ctx], Any]
    expect: type[BaseException] | None
    fragment: str = ""
    config: tk.CheckpointConfig | None = field(default_factory=lambda: SCORE)  # None: the row does not open the run
    prepare: Callable[[Ctx], Any] | None = None  # sets the scene before the snapshot


def noop_loop() -> None:
    """A training function that does nothing: a row that reaches it has failed to fail at start."""


def fit(ctx: Ctx, fn: Callable[..., Any] = noop_loop, **run: Any) -> tk.Result:
    run.setdefault("name", "run")
    run.setdefault("storage_path", str(ctx.root))
    return tk.DataParallelTrainer(fn, run_config=tk.RunConfig(**run)).fit()


def closed_port_s3() -> Any:
    """Return an s3fs filesystem whose endpoint is a closed port on 127.0.0.1 (botocore's own retries off)."""
    import s3fs

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return s3fs.S3FileSystem(key="k", secret="s", endpoint_url=f"http://127.0.0.1:{port}", skip_instance_cache=True,
                             client_kwargs={"region_name": "us-east-1"},
                             config_kwargs={"retries": {"total_max_attempts": 1}, "connect_timeout": 2})


def _tensor(value: Any) -> Any:
    import torch  # imported only by the rows that need it: collecting this module stays cheap

    return torch.tensor(value)


def _immutable(path: Path, on: bool) -> None:
    subprocess.run(["chattr", "-R", "+i" if on else "-i", str(path)], check=True, capture_output=True)


def read_only(target: Path, act: Callable[[], Any]) -> Any:
    """Run ``act`` while ``target`` (recursively) cannot be written, even by root; skip where that is impossible."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [target, *target.rglob("*")]}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            return act()
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
    try:
        _immutable(target, True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot make {target} read-only for root here (chattr +i failed: {exc}); chmod does not "
                    "stop root")
    try:
        return act()
    finally:
        _immutable(target, False)


def _newer_index(ctx: Ctx) -> None:
    index = ctx.run / "trainkeep_run.json"
    text = index.read_text()
    assert '"version": 1' in text
    index.write_text(text.replace('"version": 1', '"version": 99', 1))


def _a_file(ctx: Ctx) -> None:
    (ctx.root / "a_file").write_text("not a directory")


def _ro_dir(ctx: Ctx) -> None:
    (ctx.root / "ro").mkdir()


# ---------------------------------------------------------------------------------------------- the rows

NON_NUMBERS: list[tuple[str, Any, str]] = [
    ("str", "0.5", "'0.5' (str)"), ("none", None, "None (NoneType)"), ("true", True, "True (bool)"),
    ("false", False, "False (bool)"), ("list", [1], "[1] (list)"), ("dict", {"a": 1}, "{'a': 1} (dict)"),
    ("numpy-bool", np.bool_(True), "True (bool)"),
]
_SCORE_TYPE = "checkpoint_score_attribute 'score' must be a real number in every report that has it (NaN and +-inf "

SCORES = [
    Case("score-nan", lambda c: c.report({"score": math.nan}), ACCEPTED_LAST),
    Case("score-inf", lambda c: c.report({"score": math.inf}), ACCEPTED_LAST),
    Case("score-minus-inf", lambda c: c.report({"score": -math.inf}), ACCEPTED_LAST),
    Case("score-numpy-nan", lambda c: c.report({"score": np.float64("nan")}), ACCEPTED_LAST),
    Case("score-missing", lambda c: c.report({"loss": 0.1}), ACCEPTED_LAST),
    *[Case(f"score-{name}{'' if ckpt else '-metrics-only'}", lambda c, v=value, k=ckpt: c.report({"score": v}, k),
           ScoreTypeError, f"{_SCORE_TYPE}allowed), got {shown}")
      for name, value, shown in NON_NUMBERS for ckpt in (True, False)],
    Case("nested-score-str", lambda c: c.report({"val": {"loss": "low"}}), ScoreTypeError,
         "'val/loss' must be a real number", config=NESTED),
    Case("nested-score-dict", lambda c: c.report({"val": {"loss": {"x": 1}}}), ScoreTypeError,
         "'val/loss' must be a real number", config=NESTED),
    Case("nested-score-group-by-slash", lambda c: c.report({"val/loss/x": 1}), ScoreTypeError,
         "'val/loss' must be a real number", config=NESTED),
    Case("score-beyond-float-range", lambda c: c.report({"score": 10**400}), ScoreTypeError,
         "got an int of about 401 digits (int), which is beyond the float range"),
]

METRICS = [
    Case("metrics-set", lambda c: c.report({"x": {1, 2}}), InvalidMetricsError, "metrics['x'] has type builtins.set"),
    Case("metrics-object", lambda c: c.report({"x": object()}), InvalidMetricsError, "builtins.object"),
    Case("metrics-bytes", lambda c: c.report({"x": b"raw"}), InvalidMetricsError, "builtins.bytes"),
    Case("metrics-complex", lambda c: c.report({"x": 1 + 2j}), InvalidMetricsError, "builtins.complex"),
    Case("metrics-datetime", lambda c: c.report({"x": datetime.date(2026, 1, 1)}), InvalidMetricsError,
         "datetime.date"),
    Case("metrics-int-key", lambda c: c.report({1: 2}), InvalidMetricsError, "has a key 1 of type int"),
    Case("metrics-tuple-key", lambda c: c.report({("a",): 2}), InvalidMetricsError, "of type tuple"),
    Case("metrics-torch-scalar", lambda c: c.report({"loss": _tensor(0.5)}), InvalidMetricsError,
         "metrics['loss'] is a torch Tensor"),
    Case("metrics-torch-vector", lambda c: c.report({"w": _tensor([0.0, 0.0, 0.0])}, False), InvalidMetricsError,
         "is a torch Tensor"),
    Case("metrics-torch-score", lambda c: c.report({"score": _tensor(1.0)}), InvalidMetricsError,
         "metrics['score'] is a torch Tensor"),
    Case("metrics-numpy-array", lambda c: c.report({"w": np.zeros(3)}), InvalidMetricsError, "numpy.ndarray"),
    Case("metrics-set-in-list", lambda c: c.report({"x": [1, {2}]}, False), InvalidMetricsError,
         "metrics['x'][1] has type builtins.set"),
    Case("metrics-too-deep", lambda c: c.report(_deep(40), False), InvalidMetricsError, "nested more than 32 levels"),
    Case("metrics-two-spellings", lambda c: c.report({"a/b": 1, "a": {"b": 2}}, False), InvalidMetricsError,
         "metrics['a/b'] and metrics['a']['b'] are two spellings of the metric 'a/b'"),
    Case("metrics-int-too-long", lambda c: c.report({"x": 10**5000}), InvalidMetricsError,
         "metrics['x'] is an int of 16610 bits; allowed: ints of at most 4096 bits"),
    Case("metrics-a-list", lambda c: c.report([("score", 1)]), InvalidMetricsError, "metrics must be a dict, got list"),
    Case("metrics-none", lambda c: c.report(None, False), InvalidMetricsError, "metrics must be a dict, got NoneType"),
    Case("checkpoint-a-path", lambda c: c.manager.report({"score": 1}, str(c.scratch)), ConfigTypeError,
         "checkpoint must be a trainkeep.Checkpoint or None, got str"),
]


def _deep(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        node = {"d": node}
    return node


BAD_NAMES: list[tuple[str, Any, str]] = [
    ("slash", "a/b", "path separator"), ("backslash", "a\\b", "path separator"), ("dotdot", "..", "'..'"),
    ("dot", ".", "is not allowed"), ("inner-dotdot", "a..b", "'..'"), ("parent-escape", "../evil", "separator"),
    ("absolute", "/etc/passwd", "separator"), ("windows-absolute", "C:\\x", "separator"),
    ("nul", "ck\x00pt", "NUL"), ("tab", "ck\tpt", "control character"), ("newline", "ck\npt", "control character"),
    ("empty", "", "it is empty"), ("leading-space", " ckpt", "whitespace"), ("trailing-space", "ckpt ", "whitespace"),
    ("reserved-internal", ".trainkeep", "reserved prefix"),
    ("reserved-manifest", ".trainkeep_manifest.json", "reserved prefix"),
    ("reserved-index", "trainkeep_run.json", "reserved prefix"), ("reserved-history", "history.jsonl", "reserved"),
    ("temp-suffix", "ckpt.trainkeep_tmp", "temporary files"), ("hidden", ".hidden", "starts with '.'"),
    ("101-chars", "c" * 101, "it has 101 characters (at most 100"),
    ("240-utf8-bytes", "€" * 80, "240 bytes long in UTF-8"),
    ("not-a-string", 5, "checkpoint_dir_name must be a string, got 5 (int)"),
]
NAMES = [
    *[Case(f"name-{i}", lambda c, n=name: c.report({"score": 1}, True, n), InvalidCheckpointNameError, frag)
      for i, name, frag in BAD_NAMES],
    Case("name-committed", lambda c: c.report({"score": 1}, True, "checkpoint_000001"), CheckpointExistsError,
         "'checkpoint_000001' is already a committed checkpoint"),
    Case("name-foreign-dir", lambda c: c.report({"score": 1}, True, "foreign"), CheckpointExistsError,
         "already exists and is not a checkpoint of this run"),
]


def _config_rows(kind: str, make: Callable[..., Any], rows: list[tuple[str, Any, type, str]]) -> list[Case]:
    return [Case(f"{kind}-{field}={_stable_repr(value)}", lambda c, f=field, v=value: make(**{f: v}), exc, frag,
                 config=None) for field, value, exc, frag in rows]


def _stable_repr(value: Any) -> str:
    """Return a repr that is the same in every process (test ids must match across pytest-xdist workers)."""
    text = repr(value)
    return f"<{type(value).__name__}>" if " at 0x" in text else text


_KEEP = "num_to_keep must be None or an integer >= 1"
_ORDER = "checkpoint_score_order must be 'max' or 'min'"
_FREQ = "checkpoint_frequency must be an integer >= 0"
_FAIL = "max_failures must be an integer >= -1"
_WORKERS = "num_workers must be an integer >= 1"
_RES = "resources_per_worker must"
_TIMEOUT = "report_timeout_s must be None or a number > 0"
CONFIGS = [
    *_config_rows("CheckpointConfig", tk.CheckpointConfig, [
        ("num_to_keep", 0, ConfigError, f"{_KEEP}, got 0"), ("num_to_keep", -1, ConfigError, f"{_KEEP}, got -1"),
        ("num_to_keep", 1.5, ConfigTypeError, "got 1.5 (float)"), ("num_to_keep", True, ConfigTypeError, "True (bool)"),
        ("num_to_keep", "3", ConfigTypeError, "'3' (str)"),
        ("checkpoint_score_attribute", "", ConfigError, "non-empty string, got ''"),
        ("checkpoint_score_attribute", 3, ConfigTypeError, "got 3 (int)"),
        ("checkpoint_score_attribute", ["a"], ConfigTypeError, "['a'] (list)"),
        ("checkpoint_score_order", "MAX", ConfigError, f"{_ORDER} (lower case), got 'MAX'"),
        ("checkpoint_score_order", "best", ConfigError, "'best'"), ("checkpoint_score_order", None, ConfigError, "None"),
        ("checkpoint_score_order", 1, ConfigError, _ORDER),
        ("checkpoint_frequency", -1, ConfigError, f"{_FREQ}, got -1"),
        ("checkpoint_frequency", 1.5, ConfigTypeError, _FREQ), ("checkpoint_frequency", None, ConfigTypeError, _FREQ),
        ("checkpoint_frequency", True, ConfigTypeError, "True (bool)"),
        ("checkpoint_at_end", "yes", ConfigTypeError, "checkpoint_at_end must be True, False or None, got 'yes'"),
        ("checkpoint_at_end", 1, ConfigTypeError, "got 1 (int)"),
    ]),
    *_config_rows("FailureConfig", tk.FailureConfig, [
        ("max_failures", -2, ConfigError, f"{_FAIL} (-1 means unlimited), got -2"),
        ("max_failures", 1.5, ConfigTypeError, _FAIL), ("max_failures", "3", ConfigTypeError, "'3' (str)"),
        ("max_failures", None, ConfigTypeError, "None"), ("max_failures", True, ConfigTypeError, "True (bool)"),
    ]),
    *_config_rows("ScalingConfig", tk.ScalingConfig, [
        ("num_workers", 0, ConfigError, f"{_WORKERS}, got 0"), ("num_workers", -1, ConfigError, "got -1"),
        ("num_workers", 1.5, ConfigTypeError, _WORKERS), ("num_workers", "2", ConfigTypeError, "'2' (str)"),
        ("num_workers", True, ConfigTypeError, "True (bool)"), ("num_workers", None, ConfigTypeError, "None"),
        ("use_gpu", "yes", ConfigTypeError, "use_gpu must be True or False, got 'yes'"),
        ("use_gpu", 1, ConfigTypeError, "got 1 (int)"),
        ("resources_per_worker", [("CPU", 1)], ConfigTypeError, f"{_RES} be None or a dict"),
        ("resources_per_worker", {"CPU": -1}, ConfigError, "'CPU': -1"),
        ("resources_per_worker", {"CPU": math.nan}, ConfigError, "'CPU': nan"),
        ("resources_per_worker", {"CPU": "1"}, ConfigError, "'CPU': '1'"),
        ("resources_per_worker", {1: 1}, ConfigError, "1: 1"),
        ("placement_strategy", "strict_pack", ConfigError,
         "placement_strategy must be one of ['PACK', 'SPREAD', 'STRICT_PACK', 'STRICT_SPREAD'], got 'strict_pack'"),
        ("placement_strategy", None, ConfigError, "None (NoneType)"),
    ]),
    *_config_rows("RunConfig", tk.RunConfig, [
        ("name", "a/b", InvalidCheckpointNameError, "RunConfig.name 'a/b' is not allowed"),
        ("name", "..", InvalidCheckpointNameError, "RunConfig.name '..'"),
        ("name", "", InvalidCheckpointNameError, "it is empty"),
        ("name", "r" * 101, InvalidCheckpointNameError, "101 characters"),
        ("name", 5, InvalidCheckpointNameError, "RunConfig.name must be a string, got 5"),
        ("storage_path", 5, ConfigTypeError, "storage_path must be a path or a URL string, got 5 (int)"),
        ("storage_path", "", ConfigError, "storage_path must be a path or a URL string, got ''"),
        ("storage_path", b"/tmp", ConfigTypeError, "b'/tmp' (bytes)"),
        ("storage_filesystem", "s3", ConfigTypeError, "storage_filesystem must be None, an fsspec filesystem"),
        ("storage_filesystem", object(), ConfigTypeError, "(object)"),
        ("checkpoint_config", {"num_to_keep": 1}, ConfigTypeError, "checkpoint_config must be a trainkeep."),
        ("failure_config", 3, ConfigTypeError, "failure_config must be a trainkeep.FailureConfig, got 3"),
        ("callbacks", [object()], ConfigError, "callbacks must be None or a list of trainkeep.UserCallback"),
        ("callbacks", "tensorboard", ConfigError, "callbacks must be None or a list of trainkeep.UserCallback"),
        ("report_timeout_s", 0, ConfigError, f"{_TIMEOUT}, got 0"), ("report_timeout_s", -1, ConfigError, "-1"),
        ("report_timeout_s", "5", ConfigError, "'5'"), ("report_timeout_s", True, ConfigError, "True"),
        ("report_timeout_s", math.nan, ConfigError, "nan"),
    ]),
    Case("manager-config-a-dict", lambda c: tk.CheckpointManager(c.run, {"num_to_keep": 1}), ConfigTypeError,
         "checkpoint_config must be a trainkeep.CheckpointConfig, got dict", config=None),
]


def _trainer(**kwargs: Any) -> Callable[[Ctx], Any]:
    fn = kwargs.pop("fn", noop_loop)
    return lambda c: tk.DataParallelTrainer(fn, **kwargs)


def _two_args(config: Any, extra: Any) -> None:
    """A training function with a second required argument."""


TRAINERS = [
    Case("trainer-fn-not-callable", lambda c: tk.DataParallelTrainer(42), ConfigTypeError,  # type: ignore[arg-type]
         "train_loop_per_worker must be a function, got 42", config=None),
    Case("trainer-config-a-list", _trainer(train_loop_config=[1]), ConfigTypeError,
         "train_loop_config must be None or a dict, got list", config=None),
    Case("trainer-scaling-an-int", _trainer(scaling_config=2), ConfigTypeError,
         "scaling_config must be a trainkeep.ScalingConfig, got 2", config=None),
    Case("trainer-run-a-dict", _trainer(run_config={}), ConfigTypeError, "run_config must be a trainkeep.RunConfig",
         config=None),
    Case("trainer-fn-two-args", _trainer(fn=_two_args), ConfigError, "must take one argument (the config) or none",
         config=None),
    Case("trainer-config-for-no-arg-fn", _trainer(train_loop_config={"a": 1}), ConfigError,
         "train_loop_per_worker takes no argument", config=None),
    Case("trainer-checkpoint-frequency", _trainer(run_config=tk.RunConfig(
        checkpoint_config=tk.CheckpointConfig(checkpoint_frequency=2))), ConfigError,
        "CheckpointConfig(checkpoint_frequency=2) does not apply to a training function", config=None),
    Case("trainer-executor-unknown", _trainer(executor="slurm"), ConfigError,
         "executor must be one of ['local', 'ray'] (or None for the default), got 'slurm'", config=None),
    Case("trainer-executor-an-int", _trainer(executor=2), ConfigTypeError,
         "executor must be None or one of ['local', 'ray'], got 2", config=None),
    Case("trainer-checkpoint-at-end", _trainer(run_config=tk.RunConfig(
        checkpoint_config=tk.CheckpointConfig(checkpoint_at_end=True))), ConfigError,
        "CheckpointConfig(checkpoint_at_end=True) does not apply", config=None),
]

STORAGE = [
    Case("storage-path-is-a-file", lambda c: tk.CheckpointManager(c.root / "a_file" / "run"), StorageError,
         "a_file/run", config=None, prepare=_a_file),
    Case("fit-storage-path-is-a-file", lambda c: fit(c, storage_path=str(c.root / "a_file")), StorageError,
         "a_file/run", config=None, prepare=_a_file),
    Case("run-path-is-a-file", lambda c: tk.CheckpointManager(c.root / "a_file"), StorageError,
         "the run path exists and is a file", config=None, prepare=_a_file),
    Case("fit-run-path-is-a-file", lambda c: fit(c, name="a_file"), StorageError, "exists and is a file",
         config=None, prepare=_a_file),
    Case("storage-read-only", lambda c: read_only(c.root / "ro", lambda: tk.CheckpointManager(c.root / "ro" / "r")),
         StorageError, "ro/r", config=None, prepare=_ro_dir),
    Case("fit-storage-read-only", lambda c: read_only(c.root / "ro", lambda: fit(c, storage_path=str(c.root / "ro"))),
         StorageError, "ro/run", config=None, prepare=_ro_dir),
    Case("run-read-only", lambda c: read_only(c.run, lambda: tk.CheckpointManager(c.run)), OSError,
         "run/.trainkeep", config=None),
    Case("storage-unreachable", lambda c: _unreachable_manager(), StorageError, "[ECONNREFUSED]", config=None),
    Case("fit-storage-unreachable", lambda c: fit(c, storage_path="s3://bucket/runs",
                                                 storage_filesystem=closed_port_s3()),
         StorageError, "[ECONNREFUSED]", config=None),
    Case("run-from-newer-version", lambda c: tk.CheckpointManager(c.run), IncompatibleRunError,
         "with format version 99; this trainkeep", config=None, prepare=_newer_index),
    Case("fit-run-from-newer-version", fit, IncompatibleRunError, "format version 99", config=None,
         prepare=_newer_index),
    Case("result-from-newer-version", lambda c: tk.Result.from_path(str(c.run)), IncompatibleRunError,
         "format version 99", config=None, prepare=_newer_index),
]


def _unreachable_manager() -> tk.CheckpointManager:
    from trainkeep._internal.storage import FsspecStorage, RetryPolicy

    fs = closed_port_s3()  # trainkeep's own retries kept short here; the fit() row takes the default policy
    return tk.CheckpointManager("s3://bucket/run", storage_filesystem=fs,
                                storage=FsspecStorage(fs, RetryPolicy(attempts=2, base_s=0.01)))


def _report_dir(ctx: Ctx, make: Callable[[Path], Any]) -> Any:
    """Report a fresh source directory (model.bin plus what ``make`` puts in it) through ``ctx.manager``."""
    assert ctx.manager is not None
    src = Path(tempfile.mkdtemp(dir=ctx.scratch))
    (src / "model.bin").write_bytes(b"weights")
    make(src)
    return ctx.manager.report({"score": 1}, tk.Checkpoint.from_directory(src))


def _named(name: str) -> Callable[[Ctx], Any]:
    def make(src: Path) -> None:
        target = src.joinpath(*name.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"data")

    return lambda c: _report_dir(c, make)


def _linked(name: str, target: str) -> Callable[[Ctx], Any]:
    return lambda c: _report_dir(c, lambda src: (src / name).symlink_to(target))


# Files in a reported directory that could not be stored and restored exactly (issue 14: 1, 3, 4)
FILES = [
    Case("file-backslash", _named("a\\b.bin"), UnsupportedCheckpointFileError, "contains a backslash"),
    Case("file-newline", _named("a\nb.bin"), UnsupportedCheckpointFileError, "control character '\\n'"),
    Case("file-escape-char", _named("a\x1b[31m"), UnsupportedCheckpointFileError, "control character '\\x1b'"),
    Case("file-not-utf8", _named(os.fsdecode(b"caf\xe9.bin")), UnsupportedCheckpointFileError,
         "not valid UTF-8 (bytes b'caf\\xe9.bin')"),
    Case("file-reserved-prefix", _named(".trainkeep_state"), UnsupportedCheckpointFileError, "reserved"),
    Case("file-temp-suffix", _named("model.trainkeep_tmp"), UnsupportedCheckpointFileError, "reserved"),
    Case("file-dir-named-manifest", _named(".trainkeep_manifest.json/x"), UnsupportedCheckpointFileError,
         "reserved"),
    Case("file-fifo", lambda c: _report_dir(c, lambda src: os.mkfifo(src / "pipe")),
         UnsupportedCheckpointFileError, "pipe': it is a FIFO"),
    Case("file-link-to-dev-zero", _linked("zeros", "/dev/zero"), UnsupportedCheckpointFileError,
         "zeros': it is a character device"),
    Case("file-symlink-loop", _linked("loop", "."), UnsupportedCheckpointFileError, "a directory that contains it"),
    Case("file-dangling-link", _linked("gone", "/nonexistent/trainkeep"), UnsupportedCheckpointFileError,
         "dangling symlink"),
    Case("file-the-run-itself", lambda c: c.manager.report({"score": 1}, tk.Checkpoint.from_directory(c.run)),
         UnsupportedCheckpointFileError, "holds a trainkeep run"),
    Case("file-the-storage-path", lambda c: c.manager.report({"score": 1}, tk.Checkpoint.from_directory(c.root)),
         UnsupportedCheckpointFileError, "run': it holds a trainkeep run"),
]

TABLE = SCORES + METRICS + NAMES + CONFIGS + TRAINERS + STORAGE + FILES
