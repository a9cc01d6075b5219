"""Rounds: naming rules, file clashes and same-file rounds, whatever order the ranks arrive in.

The pure bookkeeping first (rounds.py), then same-file rounds end to end with 2 and 4 real worker processes.
"""

from __future__ import annotations

import itertools
import json
import logging
import os

import pytest

import trainkeep as tk
from trainkeep._internal.core.layout import MANIFEST_NAME
from trainkeep._internal.core.manifest import FileEntry
from trainkeep._internal.engine.verify import read_manifest, verify_checkpoint
from trainkeep._internal.storage import LocalStorage
from trainkeep._internal.trainer.rounds import Arrival, Round, assign_paths
from trainkeep.errors import InconsistentReportError


def arrival(rank, has_checkpoint=True, dir_name=None, files=("a",), mode="SYNC"):
    return Arrival(rank, has_checkpoint, mode, dir_name, list(files) if files is not None else None)


def outcome(arrivals):
    """Return the round's checkpoint name, or the error text, after adding ``arrivals`` in order."""
    rnd = Round(7, 0.0)
    try:
        for a in arrivals:
            rnd.add(a)
        rnd.check_names()
    except InconsistentReportError:
        return "error"
    return rnd.name


CASES = [
    ([arrival(0, files=["a"]), arrival(1, files=["b"]), arrival(2, False)], "checkpoint_000007"),
    ([arrival(0, dir_name="x", files=["a"]), arrival(1, False, dir_name="x")], "x"),
    ([arrival(0, dir_name="x", files=["a"]), arrival(1, dir_name="x", files=["b"])], "x"),
    ([arrival(0, False, dir_name="x"), arrival(1, False, dir_name="y")], None),  # no checkpoint: names ignored
    ([arrival(0, dir_name="x", files=["a"]), arrival(1, dir_name="y", files=["b"])], "error"),
    ([arrival(0, dir_name="x", files=["a"]), arrival(1, files=["b"])], "error"),  # None is the default name
    ([arrival(0, False, dir_name="x"), arrival(1, files=["b"])], "error"),
    ([arrival(0, files=["a"]), arrival(1, files=["a"])], "checkpoint_000007"),  # stored once (rank 0's)
    ([arrival(0, files=["d/a"]), arrival(1, files=["d"])], "error"),  # a file of one is a directory of the other
    ([arrival(0, files=["d/a", "d/e/f"]), arrival(1, files=["d/b", "d/e/g"])], "checkpoint_000007"),
    ([arrival(0, files=None), arrival(1, files=["b"], dir_name=None)], "checkpoint_000007"),
]


@pytest.mark.parametrize(("arrivals", "expected"), CASES)
def test_the_outcome_does_not_depend_on_the_order_of_arrival(arrivals, expected):
    assert {outcome(list(order)) for order in itertools.permutations(arrivals)} == {expected}


def test_the_first_rank_with_a_checkpoint_names_the_round():
    rnd = Round(0, 0.0)
    rnd.add(arrival(1, False))
    assert rnd.name is None
    rnd.add(arrival(2, files=["b"]))
    assert (rnd.name, rnd.name_rank) == ("checkpoint_000000", 2)
    rnd.add(arrival(0, files=["a"]))
    assert rnd.name_rank == 2
    assert rnd.is_complete(3) and rnd.missing(4) == [3]


def test_a_file_that_is_a_directory_of_another_rank_names_the_path_and_both_ranks():
    rnd = Round(3, 0.0)
    rnd.add(arrival(2, files=["ok", "model/w.pt"]))
    with pytest.raises(InconsistentReportError, match=r"'model' .*round 3.* file for one of ranks 0 and 2"):
        rnd.add(arrival(0, files=["model"]))


def test_each_path_is_assigned_to_the_lowest_rank_that_passes_it():
    shares = assign_paths({3: ["m", "c", "s3"], 1: ["m", "s1"], 0: None, 2: ["c", "m"]})
    assert shares == {3: ["s3"], 1: ["m", "s1"], 0: [], 2: ["c"]}
    assert assign_paths({}) == {}


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_a_rank_learns_its_share_once_every_lower_rank_arrived(order):
    files = {0: ["m", "a"], 1: ["m", "b"], 2: None, 3: ["m", "b", "d"]}  # rank 2 passes no checkpoint
    rnd, sent = Round(0, 0.0), {}
    for rank in order:
        rnd.add(arrival(rank, files is not None and files[rank] is not None, files=files[rank]))
        if files[rank] is not None:
            rnd.deferred.append(rank)
        for to, share in rnd.take_destinations():
            assert all(lower in rnd.arrivals for lower in range(to)) and to not in sent
            sent[to] = share
    assert sent == {0: ["m", "a"], 1: ["b"], 3: ["d"]}
    assert rnd.deferred == [] and rnd.take_destinations() == []


def _entry(path, data):
    return FileEntry(path, len(data), data.hex())


def test_differing_copies_log_one_warning_naming_the_file_and_the_ranks(caplog):
    rnd = Round(5, 0.0)
    for rank in (2, 0):
        rnd.add(arrival(rank, files=["model.pt", f"shard_{rank}", "same.txt"]))
    rnd.uploads = {0, 2}
    with caplog.at_level(logging.WARNING, logger="trainkeep._internal.trainer.rounds"):
        rnd.record_upload(0, [_entry("model.pt", b"A"), _entry("shard_0", b"0"), _entry("same.txt", b"s")])
        rnd.record_upload(2, [_entry("shard_2", b"2")], [_entry("model.pt", b"C"), _entry("same.txt", b"s")])
        assert caplog.records == []  # rank 1 may still pass model.pt: not every rank arrived
        rnd.add(arrival(1, files=["model.pt", "shard_1", "same.txt"]))
        rnd.uploads.add(1)
        rnd.check_names()  # the controller's call once every rank arrived
        assert caplog.records == []  # rank 1's copy is not in yet
        rnd.record_upload(1, [_entry("shard_1", b"1")], [_entry("model.pt", b"A"), _entry("same.txt", b"s")])
    assert [r.getMessage() for r in caplog.records] == [
        "file 'model.pt' of checkpoint 'checkpoint_000005' (report round 5) was passed by ranks 0, 1, 2 with "
        "different content (rank 2 differs from rank 0); kept rank 0's copy, the lowest rank's"]
    assert sorted(e.path for e in rnd.entries) == ["model.pt", "same.txt", "shard_0", "shard_1", "shard_2"]
    assert rnd.uploads == set()


def test_copies_all_in_before_the_last_arrival_are_compared_when_it_arrives(caplog):
    rnd = Round(0, 0.0)
    for rank in (0, 1):
        rnd.add(arrival(rank, files=["m"]))
    rnd.record_upload(0, [_entry("m", b"A")])
    rnd.record_upload(1, [], [_entry("m", b"B")])
    rnd.add(arrival(2, False))
    with caplog.at_level(logging.WARNING, logger="trainkeep._internal.trainer.rounds"):
        rnd.check_names()
    assert len(caplog.records) == 1 and "'m'" in caplog.records[0].getMessage()
    assert "ranks 0, 1 with different content (rank 1 differs" in caplog.records[0].getMessage()


# ------------------------------------------------------------------------------ same-file rounds, real workers

MODEL_SIZE = 256 * 1024


def same_file_loop(config):
    """Every rank writes model.pt (the same bytes, or its own with ``differ``) and its own shard, and reports."""
    rank = tk.get_context().get_world_rank()
    sources = {}
    for epoch in range(config["epochs"]):
        d = os.path.join(config["tmp"], f"rank{rank}_epoch{epoch}")
        os.makedirs(os.path.join(d, "sub"))
        seed = f"{rank if config['differ'] else 'all'}-{epoch}".encode()
        with open(os.path.join(d, "model.pt"), "wb") as f:
            f.write((seed * (MODEL_SIZE // len(seed) + 1))[:MODEL_SIZE])
        with open(os.path.join(d, "sub", "config.json"), "w") as f:
            f.write('{"lr": 0.1}')  # identical on every rank, in a subdirectory
        with open(os.path.join(d, f"shard_{rank}.bin"), "wb") as f:
            f.write(bytes([rank]) * (1000 + rank))
        sources[epoch] = {rel: os.stat(os.path.join(d, rel)).st_ino for rel in _files_under(d)}
        with open(os.path.join(config["tmp"], f"inodes_rank{rank}.json"), "w") as f:
            json.dump(sources, f)  # which source file is whose, for the test (a moved file keeps its inode)
        tk.report({"epoch": epoch}, checkpoint=tk.Checkpoint.from_directory(d),
                  checkpoint_upload_mode=tk.CheckpointUploadMode(config["mode"]),
                  delete_local_checkpoint_after_upload=config["move"])


def _files_under(root):
    return sorted(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
                  for dirpath, _, names in os.walk(root) for name in names)


def _fit_same_file(tmp_path, workers, differ, mode="SYNC", move=True):
    tmp = tmp_path / "sources"
    tmp.mkdir(exist_ok=True)
    config = {"tmp": str(tmp), "epochs": 2, "differ": differ, "mode": mode, "move": move}
    run = tk.RunConfig(name="run", storage_path=str(tmp_path / "storage"))
    return tk.DataParallelTrainer(same_file_loop, train_loop_config=config,
                                  scaling_config=tk.ScalingConfig(num_workers=workers), run_config=run).fit()


def _check_stored_once(result, workers, differ):
    """Return each stored file's uploader per checkpoint (by inode: a moved source keeps its inode)."""
    for epoch in range(2):
        root = os.path.join(result.path, f"checkpoint_{epoch:06d}")
        stored = [rel for rel in _files_under(root) if rel != MANIFEST_NAME]
        expected = ["model.pt", *[f"shard_{r}.bin" for r in range(workers)], "sub/config.json"]
        assert stored == sorted(expected)
        # bytes on storage: one copy of model.pt and of config.json, every shard once; the manifest agrees
        on_disk = sum(os.path.getsize(os.path.join(root, rel)) for rel in stored)
        assert on_disk == MODEL_SIZE + len('{"lr": 0.1}') + sum(1000 + r for r in range(workers))
        manifest = read_manifest(LocalStorage(), result.path, f"checkpoint_{epoch:06d}")
        assert sorted(f.path for f in manifest.files) == sorted(expected)
        assert sum(f.size for f in manifest.files) == on_disk
        assert verify_checkpoint(LocalStorage(), result.path, f"checkpoint_{epoch:06d}") == []
        seed = f"{0 if differ else 'all'}-{epoch}".encode()
        with open(os.path.join(root, "model.pt"), "rb") as f:
            assert f.read() == (seed * (MODEL_SIZE // len(seed) + 1))[:MODEL_SIZE]  # rank 0's bytes


def _sources_by_rank(tmp_path, workers):
    """Return {rank: {epoch: {relative path: inode}}} of the source files every rank wrote."""
    sources = {}
    for rank in range(workers):
        with open(tmp_path / "sources" / f"inodes_rank{rank}.json") as f:
            sources[rank] = {int(epoch): inodes for epoch, inodes in json.load(f).items()}
    return sources


def _uploaders(result, sources_by_rank):
    """Map each stored path of each checkpoint to the rank whose source file it is (moved: the same inode)."""
    owners = {}
    for epoch in range(2):
        root = os.path.join(result.path, f"checkpoint_{epoch:06d}")
        for rel in _files_under(root):
            if rel == MANIFEST_NAME:
                continue
            inode = os.stat(os.path.join(root, rel)).st_ino
            owners[(epoch, rel)] = [r for r, sources in sources_by_rank.items() if sources[epoch].get(rel) == inode]
    return owners


@pytest.mark.parametrize("workers", [2, 4])
def test_identical_files_from_every_rank_are_stored_once_uploaded_by_rank_0(tmp_path, caplog, workers):
    with caplog.at_level(logging.WARNING, logger="trainkeep"):
        result = _fit_same_file(tmp_path, workers, differ=False)
    _check_stored_once(result, workers, differ=False)
    assert not [r for r in caplog.records if "different content" in r.getMessage()]
    for (_, rel), ranks in _uploaders(result, _sources_by_rank(tmp_path, workers)).items():
        assert ranks == [int(rel[6]) if rel.startswith("shard_") else 0], rel  # exactly one uploader each


@pytest.mark.parametrize("workers", [2, 4])
def test_different_files_keep_rank_0_s_copy_and_warn_once_per_file(tmp_path, caplog, workers):
    with caplog.at_level(logging.WARNING, logger="trainkeep"):
        result = _fit_same_file(tmp_path, workers, differ=True, mode="ASYNC")
    _check_stored_once(result, workers, differ=True)
    ranks = ", ".join(str(r) for r in range(workers))
    warnings = [r.getMessage() for r in caplog.records if "different content" in r.getMessage()]
    assert len(warnings) == 2  # one per round: model.pt differs, sub/config.json is the same everywhere
    for epoch, message in enumerate(warnings):
        assert message.startswith(f"file 'model.pt' of checkpoint 'checkpoint_{epoch:06d}' (report round {epoch}) "
                                  f"was passed by ranks {ranks} with different content")
        assert "kept rank 0's copy" in message
    for (_, rel), owners in _uploaders(result, _sources_by_rank(tmp_path, workers)).items():
        assert owners == [int(rel[6]) if rel.startswith("shard_") else 0], rel


def test_copied_sources_stay_and_nothing_is_uploaded_twice(tmp_path):
    """Without hand-over every rank's sources stay where they were; a second upload would have raised."""
    result = _fit_same_file(tmp_path, 2, differ=False, move=False)
    _check_stored_once(result, 2, differ=False)
    for rank in range(2):
        assert _files_under(tmp_path / "sources" / f"rank{rank}_epoch0") == sorted(
            ["model.pt", f"shard_{rank}.bin", "sub/config.json"])
