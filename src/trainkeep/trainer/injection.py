"""A hook for tests: wrap the storage the trainer writes a run through, in the driver and in every worker.

Set ``TRAINKEEP_STORAGE_WRAPPER=package.module:function`` and the trainer replaces each storage it opens a run
with (the driver's CheckpointManager, and each worker's, which uploads the files of SYNC and ASYNC reports)
by ``function(storage, role)``, with ``role`` "driver" or "worker". Workers inherit the driver's environment.
This is how ``trainkeep.testing`` injects faults into the upload path of ASYNC reports, which runs in the
worker processes (see docs/testing.md). Unset, as outside tests, it costs one environment lookup per run.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from trainkeep.errors import ConfigError
from trainkeep.storage import Storage, resolve

STORAGE_WRAPPER_ENV = "TRAINKEEP_STORAGE_WRAPPER"


def wrap_storage(storage: Storage, role: str) -> Storage:
    """Return ``storage`` wrapped by the factory that $TRAINKEEP_STORAGE_WRAPPER names (itself when unset).

    Raises:
        ConfigError when the variable does not name an importable ``module:function``.
    """
    spec = os.environ.get(STORAGE_WRAPPER_ENV)
    if not spec:
        return storage
    module, _, name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{STORAGE_WRAPPER_ENV} must name a function as 'package.module:function', got "
                          f"{spec!r} ({exc})") from exc
    return factory(storage, role)


def driver_storage(run_url: str, filesystem: Any) -> Storage | None:
    """Return the wrapped storage for the driver's CheckpointManager, or None (the manager's own) when unset."""
    if not os.environ.get(STORAGE_WRAPPER_ENV):
        return None
    return wrap_storage(resolve(run_url, filesystem)[0], "driver")
