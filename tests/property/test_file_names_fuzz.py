"""Fuzz the commit path with file names and directory shapes (issue 14): it round-trips or it leaves nothing.

Each example builds a source directory: files at random depths under odd names (spaces, unicode, '\\', control
characters, undecodable bytes, glob and URL characters, our reserved names, 255-byte names), symlinks to files
and to directories outside it, symlink loops and dangling links. Reported on the local disk and on fsspec's
memory filesystem, either

- the report is accepted, and resume and ``to_directory`` give back exactly the files of the source, with
  symlinks followed (the oracle reads them with ``os.walk(followlinks=True)``, not through trainkeep), or
- it is refused with ``UnsupportedCheckpointFileError``, and nothing is left behind: no staged directory, no
  intent, no history row, the run index unchanged.

Deterministic by default (hypothesis ``derandomize``); ``SEED=<int>`` explores a different, replayable stream.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import trainkeep as tk
from trainkeep._internal.core.layout import MANIFEST_NAME, TEMP_SUFFIX
from trainkeep.errors import UnsupportedCheckpointFileError

_SEED = os.environ.get("SEED")
_SETTINGS = settings(max_examples=60, derandomize=_SEED is None, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _replayable(test: Any) -> Any:
    """Apply the shared settings; with SEED= set, seed hypothesis with it (printed on failure by hypothesis)."""
    test = _SETTINGS(test)
    return hypothesis_seed(int(_SEED))(test) if _SEED else test


_ODD = "ab Z.-_~é名😀*?[]{}:#%&'\"$=+,;@!\\\n\t\x01\x7f\x85\u2028\udcff"
_SPECIAL = [".trainkeep_manifest.json", ".trainkeep_x", "x.trainkeep_tmp", ".m.1234abcd.trainkeep_tmp", "x" * 255,
            "é" * 127, ".metadata.json", "..a", " ", "a:", "trainkeep_run.json.txt"]
_names = st.text(st.sampled_from(_ODD), min_size=1, max_size=8) | st.sampled_from(_SPECIAL)
_names = _names.filter(lambda n: n not in (".", "..") and "/" not in n)


@dataclass(frozen=True)
class Entry:
    """One thing to create in the source: a file, or a symlink of some kind, at ``parts`` under the root."""

    parts: tuple[str, ...]
    kind: str  # file | link_file | link_dir | loop | dangling
    data: bytes


_entries = st.lists(
    st.builds(Entry, st.lists(_names, min_size=1, max_size=3).map(tuple),
              st.sampled_from(["file"] * 6 + ["link_file", "link_dir", "loop", "dangling"]),
              st.binary(max_size=64)),
    min_size=1, max_size=6,
)


def _build(root: Path, outside: Path, entries: list[Entry]) -> None:
    """Create ``entries`` under ``root`` (skipping any that clash with one made before); targets in ``outside``."""
    (outside / "dir" / "inner").mkdir(parents=True)
    (outside / "file.bin").write_bytes(b"outside file")
    (outside / "dir" / "one.bin").write_bytes(b"one")
    (outside / "dir" / "inner" / "two.bin").write_bytes(b"two")
    root.mkdir()
    for entry in entries:
        target = root.joinpath(*entry.parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if entry.kind == "file":
                target.write_bytes(entry.data)
            elif entry.kind == "link_file":
                target.symlink_to(outside / "file.bin")
            elif entry.kind == "link_dir":
                target.symlink_to(outside / "dir")
            elif entry.kind == "loop":
                target.symlink_to("." if len(entry.parts) == 1 else "..")
            else:
                target.symlink_to(outside / "missing")
        except OSError:  # a clash (a file where a directory goes), or a name too long for the disk
            continue


def _expected(root: Path) -> dict[str, bytes] | None:
    """The files a faithful copy holds, read with symlinks followed; None when no copy can hold the source."""
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        if len(Path(dirpath).relative_to(root).parts) > 12:
            return None  # a symlink loop
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if not os.path.exists(full):
                return None  # dangling
        for name in filenames:
            if name == MANIFEST_NAME or (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
                continue  # ours: a report leaves them out
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            out[rel] = Path(dirpath, name).read_bytes()
    return out



def _listing(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {p: fs.cat_file(p) for p in fs.find(path)}


@pytest.fixture(scope="module", autouse=True)
def _announce_seed() -> None:
    print(f"random seed: {'SEED=' + _SEED if _SEED else 'derandomized (SEED=<int> explores another stream)'}")


@pytest.mark.parametrize("store", ["local", "memory"])
@_replayable
@given(entries=_entries)
def test_fuzz_a_report_round_trips_or_leaves_nothing(store: str, entries: list[Entry],
                                                     read_tree: Callable[[str], dict[str, bytes]]) -> None:
    work = Path(tempfile.mkdtemp(prefix="tk-fuzz-"))
    memory = fsspec.filesystem("memory")
    url = str(work / "run") if store == "local" else f"memory://fuzz-{uuid.uuid4().hex}/run"
    try:
        _build(work / "src", work / "outside", entries)
        with tk.CheckpointManager(url, storage_filesystem=None if store == "local" else memory) as manager:
            fs = fsspec.filesystem("file") if store == "local" else memory
            manager.report({"epoch": 0}, None)
            before = _listing(fs, manager.path)
            try:
                committed = manager.report({"epoch": 1}, tk.Checkpoint.from_directory(work / "src"))
            except UnsupportedCheckpointFileError as exc:
                assert isinstance(exc, ValueError) and exc.path.startswith(str(work / "src"))
                assert _listing(fs, manager.path) == before  # nothing staged, no intent, no row, same index
                assert manager.next_round == 1 and manager.resume_checkpoint() is None
                return
            expected = _expected(work / "src")
            assert expected is not None, "a source with a loop or a dangling link was accepted"
            assert committed is not None and manager.resume_checkpoint() == committed
            assert read_tree(committed.to_directory(str(work / "restored"))) == expected
            with committed.as_directory() as local:
                assert {k: v for k, v in read_tree(local).items() if k != MANIFEST_NAME} == expected
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if store == "memory" and memory.exists(url):
            memory.rm(url.split("/run")[0], recursive=True)
