"""trainkeep: checkpoints of training runs that are never lost, with Ray Train's API.

Public names only; see DESIGN.md for the contract.
"""

from __future__ import annotations

__version__ = "0.1.0"

from trainkeep.checkpoint import Checkpoint
from trainkeep.config import (
    CheckpointConfig,
    CheckpointUploadMode,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from trainkeep.errors import (
    CheckpointExistsError,
    ChecksumMismatchError,
    ConfigError,
    ConfigTypeError,
    CorruptRunError,
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
    TrainkeepError,
)
from trainkeep.manager import CheckpointManager
from trainkeep.result import Result

__all__ = [
    "Checkpoint",
    "CheckpointConfig",
    "CheckpointExistsError",
    "CheckpointManager",
    "CheckpointUploadMode",
    "ChecksumMismatchError",
    "ConfigError",
    "ConfigTypeError",
    "CorruptRunError",
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
    "TrainingFailedError",
    "TrainkeepError",
    "__version__",
]
