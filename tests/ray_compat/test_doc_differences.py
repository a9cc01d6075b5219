"""Where trainkeep behaves differently from Ray Train 2.60 on purpose, for the documentation examples and the
V1/AIR tests ported in tests/ray_compat (ray-project/ray doc/source/train/doc_code, doc/source/train/user-guides,
python/ray/train/tests, python/ray/air/tests).

Each test's name and docstring say the difference and why; /work/notes/compat-docs.md lists them for
docs/trainer.md's "Compatibility with Ray Train".
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

import trainkeep as train
from trainkeep import Checkpoint, ScalingConfig


def in_run_upload_fn_train_fn(config):
    """doc_code/checkpoints.py __checkpoint_upload_fn_start__ as written: save into a run directory named by the
    epoch, and have the upload fn only wait and return that checkpoint."""
    storage_context = train.get_context().get_storage()
    checkpoint_path = storage_context.build_checkpoint_path_from_name("0")
    os.makedirs(checkpoint_path, exist_ok=True)
    Path(checkpoint_path, "model.pt").write_text("saved by the user's writer")

    def wait_async_save(checkpoint, checkpoint_dir_name):
        return checkpoint

    train.report({"epoch": 0}, checkpoint=Checkpoint(checkpoint_path),
                 checkpoint_upload_mode=train.CheckpointUploadMode.ASYNC, checkpoint_upload_fn=wait_async_save)


def test_checkpoint_upload_fn_must_upload_into_the_directory_it_is_given(tmp_path):
    """Ray registers whatever run directory the upload fn returns; trainkeep requires the directory named by the
    fn's ``checkpoint_dir_name`` argument, and never writes into a directory it did not create.

    Why: the commit protocol stages the round's directory under the name it chose, and a directory that is not
    a checkpoint of this run is never written into or swept (DESIGN §5, invariant 3). A checkpoint written in
    place is reported with NO_UPLOAD (test_doc_checkpoints.py::test_no_upload_...).
    """
    trainer = train.DataParallelTrainer(in_run_upload_fn_train_fn, scaling_config=ScalingConfig(num_workers=1),
                                        run_config=train.RunConfig(name="run", storage_path=str(tmp_path)))
    with pytest.raises(train.WorkerGroupError) as info:
        trainer.fit()
    assert isinstance(info.value.worker_failures[0], ValueError)  # as Ray's own checks of the returned checkpoint
    assert "checkpoint_upload_fn must upload into the checkpoint directory" in str(info.value)
    assert Path(tmp_path, "run", "0", "model.pt").read_text() == "saved by the user's writer"  # left untouched


def one_report_train_fn(config):
    with tempfile.TemporaryDirectory() as d:
        Path(d, "model.pt").touch()
        train.report({"loss": 1.0}, checkpoint=Checkpoint.from_directory(d))


def test_a_committed_checkpoint_directory_also_holds_trainkeep_s_manifest(tmp_path):
    """Ray's checkpoint directory holds only the workers' files; trainkeep's also holds its commit record,
    the hidden file ``.trainkeep_manifest.json`` (file sizes and checksums).

    Why: the manifest is what makes a checkpoint exist and lets it be verified (DESIGN §5, invariant 1). Code
    that lists a checkpoint directory should skip dot files, as it already must for Ray's ``.metadata.json``.
    """
    result = train.DataParallelTrainer(one_report_train_fn, scaling_config=ScalingConfig(num_workers=1),
                                       run_config=train.RunConfig(storage_path=str(tmp_path))).fit()
    with result.checkpoint.as_directory() as d:
        assert sorted(os.listdir(d)) == [".trainkeep_manifest.json", "model.pt"]


def test_result_filesystem_is_an_fsspec_filesystem_not_pyarrow(tmp_path):
    """Ray's ``Result.filesystem`` and ``Checkpoint.filesystem`` are ``pyarrow.fs.FileSystem``s; trainkeep's are
    fsspec filesystems (a pyarrow one passed as ``storage_filesystem`` is accepted and wrapped).

    Why: trainkeep's storage layer is fsspec (DESIGN §2), which covers the same stores; code that only passes the
    filesystem back to trainkeep (``Result.from_path(path, storage_filesystem=result.filesystem)``) is unaffected.
    """
    import fsspec

    result = train.DataParallelTrainer(one_report_train_fn, scaling_config=ScalingConfig(num_workers=1),
                                       run_config=train.RunConfig(name="run", storage_path=str(tmp_path))).fit()
    assert isinstance(result.filesystem, fsspec.AbstractFileSystem)
    assert isinstance(result.checkpoint.filesystem, fsspec.AbstractFileSystem)
    again = train.Result.from_path(result.path, storage_filesystem=result.filesystem)
    assert again.checkpoint == result.checkpoint


def test_preemption_handling_is_not_offered():
    """doc_code/fault_tolerance.py's preemption snippets (``get_preemption_info()``,
    ``FailureConfig(max_preemption_failures=..., relax_collectives_on_preemption=..., preemption_grace_s=...)``)
    have no trainkeep counterpart: the names are missing and the arguments are a TypeError.

    Why: trainkeep does not watch nodes for preemption notices (docs/trainer.md, "Not supported"); a preempted
    worker is a failed worker, restarted from the latest checkpoint within ``max_failures``.
    """
    assert not hasattr(train, "get_preemption_info")
    for kwargs in ({"max_preemption_failures": -1}, {"relax_collectives_on_preemption": True},
                   {"preemption_grace_s": 120.0}):
        with pytest.raises(TypeError, match=next(iter(kwargs))):
            train.FailureConfig(max_failures=3, **kwargs)


def test_a_query_string_in_storage_path_is_refused_not_read_as_options(tmp_path):
    """persistent-storage.rst "MinIO and other S3-compatible storage": Ray (through pyarrow) reads
    ``storage_path="s3://bucket-name/sub-path?endpoint_override=http://localhost:9000"`` as a path plus filesystem
    options; trainkeep refuses such a URL with a ConfigError (a ValueError) before anything is written.

    Why: fsspec, trainkeep's storage layer, would take the query string as part of the object key, and the run
    would go to the default endpoint under a mangled name. The options go on ``storage_filesystem`` instead
    (test_doc_persistent_storage.py shows both forms).
    """
    url = "s3://bucket-name/sub-path?endpoint_override=http://localhost:9000"
    trainer = train.DataParallelTrainer(one_report_train_fn, scaling_config=ScalingConfig(num_workers=1),
                                        run_config=train.RunConfig(storage_path=url, name="unique-run-id"))
    with pytest.raises(train.ConfigError, match=r"storage_path 's3://bucket-name/sub-path\?endpoint_override="
                                                r"http://localhost:9000/unique-run-id' has a query string"):
        trainer.fit()
    assert isinstance(train.ConfigError("x"), ValueError)
    with pytest.raises(ValueError, match="query string"):
        train.Result.from_path(url)


def test_checkpoints_of_the_same_directory_are_equal(tmp_path):
    """Ray's Checkpoint has identity equality (two Checkpoints of one directory are unequal); trainkeep's are
    equal, and hash alike, when they name the same path on the same filesystem.

    Why: ``result.checkpoint == Result.from_path(...).checkpoint`` and ``checkpoint in result.best_checkpoints``
    then mean what a user expects (DESIGN §2).
    """
    first, second = Checkpoint.from_directory(str(tmp_path)), Checkpoint.from_directory(str(tmp_path))
    assert first == second and hash(first) == hash(second)
    assert first != Checkpoint.from_directory(str(tmp_path / "other"))


def test_v1_restore_apis_are_absent_and_a_run_resumes_by_its_name():
    """Ray 2.60 (Train V2) keeps ``Trainer.restore``, ``Trainer.can_restore`` and
    ``DataParallelTrainer(resume_from_checkpoint=...)`` as names that raise a DeprecationWarning; trainkeep has
    no such names (AttributeError, TypeError). Both resume a run by creating a trainer with the same
    ``RunConfig(storage_path, name)`` (test_v1_new_persistence.py, test_doc_fault_tolerance.py).

    Why: the deprecated names do nothing in Ray either; a missing name fails as early and as clearly.
    """
    assert not hasattr(train.DataParallelTrainer, "restore")
    assert not hasattr(train.DataParallelTrainer, "can_restore")
    with pytest.raises(TypeError, match="resume_from_checkpoint"):
        train.DataParallelTrainer(one_report_train_fn, resume_from_checkpoint=None)


def test_failure_config_has_no_fail_fast():
    """python/ray/air/tests/test_configs.py::test_failure_config_init passes ``FailureConfig(fail_fast=...)``;
    Ray 2.60 (Train V2) raises a DeprecationWarning for it, trainkeep a TypeError naming it.

    Why: fail-fast is a Ray Tune notion (stop the other trials); a trainkeep run has one worker group, and
    ``max_failures=0`` already fails on the first error.
    """
    with pytest.raises(TypeError, match="fail_fast"):
        train.FailureConfig(fail_fast=True)


def uneven_reports_fn(config):
    for _ in range(1 + train.get_context().get_world_rank()):  # rank 0 reports once, rank 1 twice
        train.report({"loss": 1})


def test_uneven_report_counts_fail_the_run_instead_of_hanging(tmp_path):
    """Ray 2.60 waits forever when the workers call ``report()`` a different number of times (its collective
    has no timeout by default); trainkeep fails the run with a ReportTimeoutError (a RuntimeError, as Ray V1's
    test_data_parallel_trainer.py::test_mismatch_report expected) naming the ranks, as soon as a rank returns
    with a round left open, or after ``RunConfig(report_timeout_s)``.

    Why: a hang is the worst failure a training job can have; the error says what to fix.
    """
    trainer = train.DataParallelTrainer(uneven_reports_fn, scaling_config=ScalingConfig(num_workers=2),
                                        run_config=train.RunConfig(storage_path=str(tmp_path)))
    with pytest.raises(train.ReportTimeoutError, match=r"rank 0 returned after 1 report\(\) call") as info:
        trainer.fit()
    assert isinstance(info.value, RuntimeError)


def same_name_files_fn(config):
    rank = train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory() as d:
        Path(d, "model.pt").write_text(f"weights of rank {rank}")
        train.report({"loss": 1.0}, checkpoint=Checkpoint.from_directory(d))
    if rank == 0:
        # rank 0 reports no checkpoint now; rank 1 does: every rank then sees the new checkpoint
        train.report({"loss": 0.5})
        return os.path.basename(train.get_checkpoint().path)
    with tempfile.TemporaryDirectory() as d:
        Path(d, "shard-1.pt").write_text("rank 1 only")
        train.report({"loss": 0.5}, checkpoint=Checkpoint.from_directory(d))
    return None


def test_same_file_from_two_ranks_keeps_rank_zero_s_and_get_checkpoint_moves_on_every_rank(tmp_path, caplog):
    """Two differences of one round protocol, in one run:

    1. Two ranks passing ``model.pt`` with different content: Ray keeps whichever upload came last; trainkeep
       keeps the lowest rank's copy and logs one warning naming the file and the ranks (identical copies are
       stored once; test_doc_key_concepts.py). Why: a deterministic result, and the difference is not silent.
    2. After a round whose checkpoint came from rank 1 only, rank 0's ``get_checkpoint()`` is that checkpoint;
       in Ray it moves only on the ranks that reported one. Why: every rank resumes from the same state.
    """
    result = train.DataParallelTrainer(same_name_files_fn, scaling_config=ScalingConfig(num_workers=2),
                                       run_config=train.RunConfig(storage_path=str(tmp_path))).fit()
    first = result.best_checkpoints[0][0]
    assert Path(first.path, "model.pt").read_text() == "weights of rank 0"
    warnings = [r.getMessage() for r in caplog.records if "model.pt" in r.getMessage()]
    assert len(warnings) == 1 and "ranks 0, 1" in warnings[0]
    assert result.return_value == "checkpoint_000001"


def test_a_missing_or_non_numeric_score_is_never_ranked_best(tmp_path):
    """Ray 2.60 ranks a checkpoint whose score attribute is missing as -inf times the order's sign, so under
    ``checkpoint_score_order="min"`` it is the best and kept forever; trainkeep ranks it below every finite
    score in both orders. A non-numeric score is a TypeError from ``report()`` before anything is written
    (Ray fails the run at the second checkpoint, leaving a directory behind).

    Why: a report that forgot its metric must not evict the real best checkpoint.
    """
    source = tmp_path / "src"
    source.mkdir()
    (source / "model.pt").write_text("w")
    config = train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="loss", checkpoint_score_order="min")
    with train.CheckpointManager(str(tmp_path / "run"), config) as manager:
        manager.report({"epoch": 0}, Checkpoint.from_directory(source))  # no "loss"
        manager.report({"epoch": 1, "loss": 0.3}, Checkpoint.from_directory(source))
        manager.report({"epoch": 2, "loss": 0.9}, Checkpoint.from_directory(source))
        assert [m["epoch"] for _, m in manager.best_checkpoints] == [1]
        before = sorted(os.listdir(manager.path))
        with pytest.raises(TypeError, match="loss"):
            manager.report({"epoch": 3, "loss": "low"}, Checkpoint.from_directory(source))
        assert sorted(os.listdir(manager.path)) == before


def test_result_metrics_include_metrics_only_rounds(tmp_path):
    """Ray 2.60's ``Result.metrics`` are the latest *checkpoint's* metrics and ``metrics_dataframe`` has one row
    per kept checkpoint; trainkeep's ``Result.metrics`` are the last round's (rank 0's) and
    ``metrics_dataframe`` has every completed round, flattened with "/".

    Why: a run's curve is every report, not only the checkpointed ones (Ray V1 behaved this way too).
    """
    source = tmp_path / "src"
    source.mkdir()
    (source / "model.pt").write_text("w")
    with train.CheckpointManager(str(tmp_path / "run")) as manager:
        manager.report({"epoch": 0, "eval": {"loss": 1.0}}, Checkpoint.from_directory(source))
        manager.report({"epoch": 1, "eval": {"loss": 0.5}})
    result = train.Result.from_path(str(tmp_path / "run"))
    assert result.metrics == {"epoch": 1, "eval": {"loss": 0.5}}
    assert list(result.metrics_dataframe["eval/loss"]) == [1.0, 0.5]
    assert [m["epoch"] for _, m in result.best_checkpoints] == [0]
