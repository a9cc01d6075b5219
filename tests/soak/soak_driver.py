"""The driver process of the SIGKILL soak: ``python soak_driver.py PLAN.json`` runs (or resumes) the soak's run.

A real DataParallelTrainer with two worker processes, ``FailureConfig(max_failures=-1)`` (a killed worker restarts
the group within this driver) and the soak's retention config. The loop never returns: the parent ends every
driver with SIGKILL, and ``fit()`` on the same run resumes it in the next driver.

``SOAK_MUTANT=<name>`` plants one of the bugs below in the driver, to show that the soak catches it (each must
make the soak fail): ``KILLS=40 SOAK_MUTANT=resume-oldest pytest tests/soak``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable

import soak_loop

import trainkeep as tk
from trainkeep._internal.core.retention import Decision, decide
from trainkeep._internal.engine import manager as manager_module
from trainkeep._internal.engine import opening as opening_module


def _delete_the_best() -> None:
    def swapped(records, config, protected=()):  # type: ignore[no-untyped-def]
        """Spare one checkpoint that retention would delete, and delete a kept one (not the latest) instead."""
        decision = decide(records, config, protected)
        latest = max(records, key=lambda r: r.round) if records else None
        victims = [r for r in decision.keep if r is not latest and r.name not in protected]
        if not decision.delete or not victims:
            return decision
        spared, victim = decision.delete[0], victims[0]
        keep = sorted([r for r in decision.keep if r is not victim] + [spared], key=lambda r: r.round)
        delete = sorted([r for r in decision.delete if r is not spared] + [victim], key=lambda r: r.round)
        return Decision(tuple(keep), tuple(delete), decision.reasons)

    manager_module.decide = swapped  # type: ignore[assignment]


def _resume_the_oldest() -> None:
    def oldest(self):  # type: ignore[no-untyped-def]
        entries = self._state.index.checkpoints
        return self._checkpoint(entries[0].name) if entries else None

    manager_module.CheckpointManager.resume_checkpoint = oldest  # type: ignore[method-assign]


def _skip_the_sweep() -> None:
    opening_module.sweep = lambda storage, path, state: None  # type: ignore[assignment]


MUTANTS: dict[str, Callable[[], None]] = {
    "delete-the-best": _delete_the_best,
    "resume-oldest": _resume_the_oldest,
    "skip-the-sweep": _skip_the_sweep,
}


def main(plan_path: str) -> None:
    with open(plan_path) as f:
        plan = json.load(f)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    mutant = os.environ.get("SOAK_MUTANT")
    if mutant:
        MUTANTS[mutant]()
    trainer = tk.DataParallelTrainer(
        soak_loop.train,
        train_loop_config=plan,
        scaling_config=tk.ScalingConfig(num_workers=2),
        run_config=tk.RunConfig(name="run", storage_path=plan["storage"],
                                checkpoint_config=tk.CheckpointConfig(**soak_loop.CONFIG),
                                failure_config=tk.FailureConfig(max_failures=-1)),
    )
    trainer.fit()
    raise SystemExit("the soak loop returned; it never should")


if __name__ == "__main__":
    main(sys.argv[1])
