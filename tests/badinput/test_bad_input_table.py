"""Every bad input has exactly one outcome: a typed error that names the value and what is allowed, with nothing
written and nothing deleted; or, for non-finite and missing scores, a commit ranked below every finite score.

The table lives in bad_inputs.py. "Nothing written, nothing deleted" is a snapshot of every file under the storage
root (content, inode, mtime) before and after the row, except the run's lock record, which any writer that opens a
run fills and empties. A hypothesis fuzz sends random checkpoint names through a real CheckpointManager: each is
refused before any I/O or committed directly inside the run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import bad_inputs as b
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import trainkeep as tk
from trainkeep._internal.core.layout import MAX_NAME_LENGTH
from trainkeep._internal.core.retention import rank

TRIED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _count_tried() -> Iterator[None]:
    yield
    print(f"\nbad inputs tried: {len(TRIED)} (the table has {len(b.TABLE)} rows, plus fuzzed names)")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of three checkpoints (scores 5, 7, 6: the latest is second best) and a foreign directory."""
    root = tmp_path_factory.mktemp("pristine")
    ctx = b.Ctx(root, root / "run", root)
    with tk.CheckpointManager(ctx.run, b.SCORE) as ctx.manager:
        for score in (5, 7, 6):
            ctx.report({"score": score})
    (ctx.run / "foreign").mkdir()
    (ctx.run / "foreign" / "notes.txt").write_text("a user's file")
    return ctx.run


@pytest.fixture
def ctx(pristine: Path, tmp_path: Path) -> Iterator[b.Ctx]:
    root = tmp_path / "storage"
    shutil.copytree(pristine, root / "run", symlinks=True)
    (tmp_path / "scratch").mkdir()
    context = b.Ctx(root, root / "run", tmp_path / "scratch")
    yield context
    if context.manager is not None:
        context.manager.close()


def _state(take: Callable[[str], dict], root: Path) -> dict:
    return {path: entry for path, entry in take(str(root)).items() if not path.endswith(os.path.join(".trainkeep",
                                                                                                      "lock"))}


def _check_ranked_last(ctx: b.Ctx, committed: tk.Checkpoint | None) -> None:
    """The commit happened, ranks below every finite score, is kept only as the latest, and goes next commit."""
    assert ctx.manager is not None and committed is not None
    name = os.path.basename(committed.path)
    assert rank(ctx.manager.records(), ctx.manager.config)[0].name == name
    assert ctx.manager.retention_decision().reasons[name].startswith("latest (never deleted)")
    assert [os.path.basename(c.path) for c, _ in ctx.manager.best_checkpoints] == ["checkpoint_000002",
                                                                                    "checkpoint_000001"]
    ctx.report({"score": 1.0})
    assert not (ctx.run / name).exists()


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in b.TABLE])
def test_each_bad_input_has_its_one_outcome(case: b.Case, ctx: b.Ctx, snapshot: Callable[[str], dict]) -> None:
    TRIED.append(case.id)
    if case.prepare is not None:
        case.prepare(ctx)
    if case.config is not None:
        ctx.manager = tk.CheckpointManager(ctx.run, case.config)
    before = _state(snapshot, ctx.root)

    if case.expect is b.ACCEPTED_LAST:
        _check_ranked_last(ctx, case.act(ctx))
        return
    with pytest.raises(case.expect) as raised:
        case.act(ctx)
    assert case.fragment in str(raised.value), f"{case.fragment!r} not in: {raised.value}"
    assert isinstance(raised.value, tk.TrainkeepError | OSError), "not one of ours (nor an OSError naming the path)"
    assert _state(snapshot, ctx.root) == before, "a refused input wrote or deleted something"
    if ctx.manager is not None:  # and the run is still usable by the same manager
        assert ctx.report({"score": 3.0}) is not None


# ---------------------------------------------------------------------------------------------- fuzz

_NAMES = (st.text(st.characters(codec="utf-8"), max_size=MAX_NAME_LENGTH + 5)
          | st.text(st.sampled_from("./\\\x00 ab.trainkeep_-~:\t€"), max_size=12)
          | st.text(st.sampled_from("ab€😀"), min_size=60, max_size=MAX_NAME_LENGTH + 2))


def test_fuzzed_names_are_refused_before_any_io_or_land_directly_inside_the_run(seed: int) -> None:
    """Random names through a real CheckpointManager on tmpfs (when there is one: commits are fsync-bound)."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    root = Path(tempfile.mkdtemp(prefix="trainkeep-names-", dir=base))
    run, neighbour = root / "storage" / "run", root / "storage" / "neighbour"
    neighbour.mkdir(parents=True)
    (neighbour / "keep.txt").write_text("must survive")
    source = root / "src"
    source.mkdir()
    (source / "model.bin").write_bytes(b"w")
    counts = {"refused": 0, "committed": 0}
    manager = tk.CheckpointManager(run)

    @hypothesis_seed(seed)
    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_NAMES)
    def one(name: str) -> None:
        TRIED.append(f"name {name!r}")
        entries = sorted(os.listdir(run)), sorted(os.listdir(run / ".trainkeep"))
        try:
            committed = manager.report({"i": 1}, tk.Checkpoint.from_directory(source), name)
        except (tk.errors.InvalidCheckpointNameError, tk.errors.CheckpointExistsError) as exc:
            assert repr(name) in str(exc)  # the error names the value
            assert (sorted(os.listdir(run)), sorted(os.listdir(run / ".trainkeep"))) == entries
            counts["refused"] += 1
            return
        assert committed is not None
        assert os.path.dirname(os.path.realpath(committed.path)) == os.path.realpath(run)
        assert os.path.basename(committed.path) == name
        counts["committed"] += 1

    try:
        one()
        assert sorted(os.listdir(root / "storage")) == ["neighbour", "run"]
        assert os.listdir(neighbour) == ["keep.txt"] and (neighbour / "keep.txt").read_text() == "must survive"
    finally:
        manager.close()
        shutil.rmtree(root, ignore_errors=True)
    print(f"fuzzed names: {counts['refused']} refused, {counts['committed']} committed inside the run")
    assert counts["refused"] and counts["committed"]


def test_the_table_covers_every_config_field() -> None:
    """A new config field without a bad-input row fails here (the table must grow with the configs)."""
    covered = {case.id.split("=")[0] for case in b.CONFIGS}
    for config in (tk.CheckpointConfig, tk.FailureConfig, tk.ScalingConfig, tk.RunConfig):
        for name in config.__dataclass_fields__:
            assert f"{config.__name__}-{name}" in covered, f"no bad-input row for {config.__name__}.{name}"
    assert len({case.id for case in b.TABLE}) == len(b.TABLE), "two rows share an id"
