"""trainkeep: checkpoints of training runs that are never lost, with Ray Train's API.

Public names only; see DESIGN.md for the contract.
"""

from __future__ import annotations

from trainkeep import collective  # so that trainkeep.collective.barrier() works after "import trainkeep"
from trainkeep._internal.core.config import (
    CheckpointConfig,
    CheckpointUploadMode,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    ValidationConfig,
    ValidationTaskConfig,
)
from trainkeep._internal.core.user_callback import UserCallback
from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep._internal.engine.manager import CheckpointManager
from trainkeep._internal.engine.result import Result
from trainkeep._internal.trainer import DataParallelTrainer
from trainkeep._internal.trainer.callbacks import TensorBoardCallback
from trainkeep._internal.trainer.datasets import DataConfig
from trainkeep._internal.trainer.reported import (
    CheckpointConsistencyMode,
    ReportedCheckpoint,
    ReportedCheckpointStatus,
)
from trainkeep._internal.trainer.session import (
    get_all_reported_checkpoints,
    get_checkpoint,
    get_context,
    get_dataset_shard,
    report,
)
from trainkeep._internal.trainer.trainable import Trainable, TrainableTrainer
from trainkeep._logging import install_default_handler
from trainkeep._version import __version__
from trainkeep.errors import (
    CheckpointExistsError,
    ChecksumMismatchError,
    ConfigError,
    ConfigTypeError,
    ControllerError,
    CorruptRunError,
    DatasetNotFoundError,
    IncompatibleRunError,
    InvalidCheckpointNameError,
    InvalidMetricsError,
    ReportTimeoutError,
    RunLockedError,
    RunNotFoundError,
    ScoreTypeError,
    SessionError,
    StorageError,
    TrainingFailedError,
    TrainingInterrupted,
    TrainkeepError,
    UnsupportedCheckpointFileError,
    WorkerGroupError,
)
from trainkeep.launch import init, shutdown

install_default_handler()  # trainkeep's lines reach stderr while the application configured no logging

__all__ = [
    "Checkpoint",
    "CheckpointConfig",
    "CheckpointExistsError",
    "CheckpointManager",
    "CheckpointUploadMode",
    "ChecksumMismatchError",
    "ConfigError",
    "ConfigTypeError",
    "ControllerError",
    "CorruptRunError",
    "DatasetNotFoundError",
    "DataConfig",
    "DataParallelTrainer",
    "FailureConfig",
    "IncompatibleRunError",
    "InvalidCheckpointNameError",
    "InvalidMetricsError",
    "ReportTimeoutError",
    "Result",
    "RunConfig",
    "RunLockedError",
    "RunNotFoundError",
    "ScalingConfig",
    "ScoreTypeError",
    "SessionError",
    "StorageError",
    "Trainable",
    "TrainableTrainer",
    "TrainingFailedError",
    "TrainingInterrupted",
    "TrainkeepError",
    "UnsupportedCheckpointFileError",
    "WorkerGroupError",
    "__version__",
    "get_checkpoint",
    "get_context",
    "get_dataset_shard",
    "report",
    "TensorBoardCallback",
    "UserCallback",
    "CheckpointConsistencyMode",
    "ReportedCheckpoint",
    "ReportedCheckpointStatus",
    "collective",
    "get_all_reported_checkpoints",
    "init",
    "shutdown",
    "ValidationConfig",
    "ValidationTaskConfig",
]


def __getattr__(name: str) -> object:
    """Import framework modules (``trainkeep.torch``, ``trainkeep.xgboost``, ...) on first use, so
    ``import trainkeep`` never imports a framework."""
    if name in ("torch", "xgboost", "lightgbm", "lightning", "huggingface"):
        import importlib

        return importlib.import_module(f"trainkeep.{name}")
    raise AttributeError(f"module 'trainkeep' has no attribute {name!r}")
