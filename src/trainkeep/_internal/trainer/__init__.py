"""Trainers that run a training function on a group of worker processes: DataParallelTrainer."""

from trainkeep._internal.trainer.data_parallel import DataParallelTrainer

__all__ = ["DataParallelTrainer"]
