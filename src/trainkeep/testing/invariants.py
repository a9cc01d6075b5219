"""The promises of DESIGN §5, checked on a run as a crash left it: first as it lies, then opened by the engine.

:func:`check_run` returns a list of violations (empty when the run keeps every promise); it reads through any
Storage, so it checks a run on local disk, in memory or on S3 alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from trainkeep._internal.core.config import CheckpointConfig
from trainkeep._internal.core.layout import (
    HISTORY_NAME,
    INTERNAL_DIR,
    LOCK_NAME,
    MANIFEST_NAME,
    METADATA_NAME,
    RUN_INDEX_NAME,
    TEMP_SUFFIX,
    is_reserved_file,
)
from trainkeep._internal.core.manifest import Manifest, parse_run_index
from trainkeep._internal.engine.manager import CheckpointManager
from trainkeep._internal.engine.run import HISTORY_PARTS_NAME
from trainkeep._internal.engine.verify import read_manifest
from trainkeep._internal.storage import Storage
from trainkeep.errors import CorruptRunError, IncompatibleRunError


@dataclass(frozen=True)
class Expectation:
    """What a run must look like after a crash at some point of a cycle.

    Attributes:
        config: the run's checkpoint config (used to reopen it).
        before: the checkpoints committed before the cycle, which must survive unless retention chose them.
        may_delete: the checkpoints retention decided to delete in the cycle.
        new: the checkpoints reported in the cycle: each must be committed whole or be invisible.
        durable: those of ``new`` whose report returned before the crash: they must be committed.
        rows: (round, checkpoint name or None) of every round reported up to the end of the cycle; None when
            not known (then only the rounds' order and the checkpoints' rows are checked).
        durable_rows: how many of ``rows`` must be in the history (the rest may be missing, never wrong).
    """

    config: CheckpointConfig
    before: tuple[str, ...] = ()
    may_delete: frozenset[str] = frozenset()
    new: tuple[str, ...] = ()
    durable: frozenset[str] = frozenset()
    rows: tuple[tuple[int, str | None], ...] | None = ()
    durable_rows: int = 0


@dataclass
class RunReport:
    """What :func:`check_run` found: the violations, and the committed checkpoints after reopening."""

    violations: list[str] = field(default_factory=list)
    committed: list[str] = field(default_factory=list)


def check_run(storage: Storage, path: str, expect: Expectation, *, reopen: bool = True) -> RunReport:
    """Check every promise of DESIGN §5 on the run at ``path``; return the violations found.

    As it lies: every directory with a manifest has a valid one and its files verify (a checkpoint exists
    if and only if its manifest is valid); the run index, when present, is valid and names only
    checkpoints that exist. Then, opened with CheckpointManager (which must succeed): no debris is left,
    every committed checkpoint verifies, nothing committed before was lost except by retention's decision,
    the new checkpoint is committed whole or invisible (committed when its report returned), history rows
    are a correct prefix of the rounds reported, and resume picks the newest checkpoint.

    Opening the run changes it (the sweep, the index); with ``reopen=False`` only the first part runs.
    """
    report = RunReport()
    bad = report.violations.append
    verified = _check_as_it_lies(storage, path, bad)
    if not reopen:
        return report
    try:
        manager = CheckpointManager(path, expect.config, storage.fs, storage=storage)
    except Exception as exc:
        bad(f"the run does not open: {type(exc).__name__}: {exc}")
        return report
    try:
        report.committed = [c.path.rstrip("/").rsplit("/", 1)[-1] for c, _ in manager.checkpoints]
        _check_opened(storage, path, manager, report.committed, expect, verified, bad)
    finally:
        manager.close()
    return report


def _check_as_it_lies(storage: Storage, path: str, bad: Callable[[str], None]) -> set[str]:
    """Check the manifests and the index as they lie; return the checkpoints that verified.

    Files are found by one recursive listing and checked against each manifest here, independently of the
    engine's own verification (which the reopened manager uses).
    """
    files, _ = _listing(storage, path)
    verified: set[str] = set()
    for name in sorted({rel.split("/", 1)[0] for rel in files if "/" in rel} - {INTERNAL_DIR, HISTORY_PARTS_NAME}):
        if f"{name}/{MANIFEST_NAME}" not in files:
            continue
        try:
            manifest = read_manifest(storage, path, name)
        except (CorruptRunError, IncompatibleRunError) as exc:
            bad(f"checkpoint {name} has an invalid manifest: {exc}")
            continue
        problems = _verify(storage, path, name, manifest, files)
        if problems:
            bad(f"checkpoint {name} has a valid manifest but does not verify: {'; '.join(problems)}")
        else:
            verified.add(name)
    index_path = storage.join(path, RUN_INDEX_NAME)
    try:
        index = parse_run_index(storage.read_bytes(index_path), index_path)
    except FileNotFoundError:
        return verified
    except (CorruptRunError, IncompatibleRunError) as exc:
        bad(f"the run index is not a valid one: {exc}")
        return verified
    for entry in index.checkpoints:
        if entry.name not in verified:
            bad(f"the run index lists checkpoint {entry.name}, which is missing or does not verify")
    return verified


def _verify(storage: Storage, path: str, name: str, manifest: Manifest, files: dict[str, int]) -> list[str]:
    """Return how the files of checkpoint ``name`` differ from its manifest (missing, size, checksum, extra)."""
    problems = []
    for entry in manifest.files:
        rel = f"{name}/{entry.path}"
        if entry.path == METADATA_NAME:
            continue
        if rel not in files:
            problems.append(f"{entry.path} is missing")
        elif files[rel] != entry.size:
            problems.append(f"{entry.path} has {files[rel]} bytes, the manifest says {entry.size}")
        elif storage.checksum(storage.join(path, rel))[1] != entry.checksum:
            problems.append(f"{entry.path} does not match its checksum")
    listed = {f"{name}/{e.path}" for e in manifest.files}
    extra = [rel for rel in files if rel.startswith(name + "/") and rel not in listed
             and not is_reserved_file(rel) and rel.rsplit("/", 1)[-1] != METADATA_NAME]
    return problems + [f"{rel} is not in the manifest" for rel in sorted(extra)]


def _listing(storage: Storage, path: str) -> tuple[dict[str, int], set[str]]:
    """Return the files ({relative path: size}) and directories under ``path``, from one recursive listing."""
    fs = storage.fs
    root = fs._strip_protocol(path).rstrip("/")
    fs.invalidate_cache(root)
    try:
        found = fs.find(root, withdirs=True, detail=True)
    except FileNotFoundError:
        return {}, set()
    files, dirs = {}, set()
    for name, info in found.items():
        rel = name.rstrip("/")[len(root):].lstrip("/")
        if not rel:
            continue
        if info.get("type") == "directory":
            dirs.add(rel)
        else:
            files[rel] = int(info.get("size") or 0)
    return files, dirs


def _check_opened(storage: Storage, path: str, manager: CheckpointManager, names: list[str], expect: Expectation,
                  verified: set[str], bad: Callable[[str], None]) -> None:
    # 1. no debris: every directory is a committed checkpoint, no temp file, only the lock in .trainkeep
    files, dirs = _listing(storage, path)
    top = {rel.split("/", 1)[0] for rel in files} | {rel.split("/", 1)[0] for rel in dirs}
    for entry in sorted(top):
        if entry.endswith(TEMP_SUFFIX):
            bad(f"temp file {entry} survived the reopen")
        elif entry not in names and entry not in (INTERNAL_DIR, HISTORY_PARTS_NAME, RUN_INDEX_NAME, HISTORY_NAME):
            bad(f"{entry} survived the reopen without being a committed checkpoint")
    leftovers = sorted(rel for rel in files if rel.startswith(INTERNAL_DIR + "/") and rel != f"{INTERNAL_DIR}/{LOCK_NAME}")
    if leftovers:
        bad(f"{leftovers} still there after the reopen")
    # 2. what is committed verified as it lay (opening does not touch committed checkpoints), and was reported
    for name in names:
        if name not in verified:
            bad(f"committed checkpoint {name} does not verify")
    for name in sorted(set(names) - set(expect.before) - set(expect.new)):
        bad(f"checkpoint {name} is committed but was never reported")
    for name in expect.before:
        if name not in names and name not in expect.may_delete:
            bad(f"checkpoint {name}, committed before the crash, is gone though retention kept it")
    for name in sorted(expect.durable):
        if name not in names and name not in expect.may_delete:
            bad(f"checkpoint {name} is not committed though its report returned before the crash")
    # 3. the history is a correct prefix of the rounds reported
    rows = [(row["round"], row["checkpoint"]) for row in manager.history]
    if [r for r, _ in rows] != list(range(len(rows))):
        bad(f"history rounds are not 0..n-1: {[r for r, _ in rows]}")
    elif expect.rows is not None and rows != list(expect.rows[: len(rows)]):
        bad(f"history rows {rows} differ from the rounds reported {list(expect.rows)}")
    if len(rows) < expect.durable_rows:
        bad(f"history has {len(rows)} rows, but {expect.durable_rows} were promised durable")
    missing_rows = set(names) - {c for _, c in rows}
    if missing_rows:
        bad(f"committed checkpoints {sorted(missing_rows)} have no history row")
    # 4. resume picks the newest committed checkpoint
    resume = manager.resume_checkpoint()
    latest = manager.latest_checkpoint
    if resume != latest:
        bad(f"resume picks {resume} instead of the newest committed checkpoint {latest}")
