"""Port of ray-project/ray python/ray/train/v2/tests/test_user_callback.py (Ray 2.60), imports swapped.

Ray's test drives its internal ``UserCallbackHandler`` with mocks; the behaviour a user sees is that a
``UserCallback`` subclass that overrides only the hooks it needs works, and that every callback given is called.
Here that is shown through a real trainer. The ``before_run`` / ``after_run`` hooks that later Ray versions add
are not in Ray 2.60's ``UserCallback`` (``after_report`` and ``after_exception`` only) and are not ported.
"""

from __future__ import annotations

import trainkeep as train
from trainkeep import DataParallelTrainer, RunConfig, ScalingConfig, UserCallback, WorkerGroupError


class LegacyCallback(UserCallback):
    """Overrides the two hooks and counts the calls."""

    def __init__(self) -> None:
        self.report_count = 0
        self.exception_count = 0

    def after_report(self, run_context, metrics, checkpoint):
        self.report_count += 1

    def after_exception(self, run_context, worker_exceptions):
        self.exception_count += 1


class ReportOnly(UserCallback):
    """Overrides only after_report: the other hook defaults to doing nothing."""

    def __init__(self) -> None:
        self.metrics: list = []

    def after_report(self, run_context, metrics, checkpoint):
        self.metrics.append(metrics)


def test_multiple_callbacks_all_invoked_and_default_hooks_are_no_ops(tmp_path):
    """Covers test_multiple_callbacks_all_invoked, test_legacy_callback_default_* and
    TestLegacyCallbackThroughHandler: every callback runs; a hook a subclass leaves out does nothing."""

    def train_fn():
        for step in range(2):
            train.report({"step": step})
        raise ValueError("boom")

    legacy, report_only = LegacyCallback(), ReportOnly()
    trainer = DataParallelTrainer(train_fn, scaling_config=ScalingConfig(num_workers=1),
                                  run_config=RunConfig(storage_path=str(tmp_path),
                                                       callbacks=[legacy, report_only]))
    try:
        trainer.fit()
    except WorkerGroupError as exc:
        assert isinstance(exc.worker_failures[0], ValueError)
    else:
        raise AssertionError("fit() should have failed")
    assert (legacy.report_count, legacy.exception_count) == (2, 1)
    assert report_only.metrics == [[{"step": 0}], [{"step": 1}]]
