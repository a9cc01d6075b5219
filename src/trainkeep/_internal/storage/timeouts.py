"""How long trainkeep waits for a remote store before it calls it failed.

A store that does not answer must fail the run, not hang it. Four bounds, each configurable:

* ``connect_s``: one TCP connection attempt (a closed port fails at once; a black hole after this).
* ``read_s``: the wait for the next bytes of a reply once a request is sent (a server that accepts the
  connection and never answers).
* ``request_s``: one whole request, including sending its body (a server that stops reading in the middle
  of an upload: nothing else notices it, because the read timer only starts once the body is sent).
* ``deadline_s``: all the attempts of one operation together; no retry starts after it (see ``retry.py``).

On the s3fs filesystems that trainkeep builds from a URL the first two become botocore's ``connect_timeout``
and ``read_timeout``, and botocore's and s3fs's own retries are turned off (``retries`` ``standard`` mode
with one attempt, ``S3FileSystem.retries = 1``) so that retrying happens in one place, ours, under the
deadline. A filesystem the user passes in is not changed (except that s3fs's retries go too when its
botocore retries are already one attempt): its client keeps its own settings, and only ``request_s`` and
``deadline_s`` bound it. Each bound is read from an environment variable (so it reaches
worker processes too) or given explicitly to :class:`~trainkeep._internal.storage.FsspecStorage`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from trainkeep.errors import ConfigError

ENV_PREFIX = "TRAINKEEP_STORAGE_"


@dataclass(frozen=True)
class Timeouts:
    """The bounds on waiting for a remote store, in seconds (see the module docstring).

    Raises (from the constructor):
        ConfigError naming the field and value when one is not a finite number > 0.
    """

    connect_s: float = 5.0
    read_s: float = 10.0
    request_s: float = 120.0
    deadline_s: float = 20.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ConfigError(f"Timeouts.{f.name} must be a finite number of seconds > 0, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Timeouts:
        """Return the defaults, overridden by ``TRAINKEEP_STORAGE_CONNECT_S`` (``_READ_S``, ``_REQUEST_S``,
        ``_DEADLINE_S``) where set.

        Raises:
            ConfigError naming the variable and its value when it is not a number of seconds > 0.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, float] = {}
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            raw = environ.get(name)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[f.name] = float(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number of seconds > 0, got {raw!r}") from None
            if not math.isfinite(values[f.name]) or values[f.name] <= 0:
                raise ConfigError(f"{name} must be a finite number of seconds > 0, got {raw!r}")
        return cls(**values)

    def botocore_config(self) -> dict[str, Any]:
        """Return the ``config_kwargs`` for an s3fs filesystem: our timeouts, and botocore retrying once only."""
        return {"connect_timeout": self.connect_s, "read_timeout": self.read_s,
                "retries": {"mode": "standard", "total_max_attempts": 1}}
