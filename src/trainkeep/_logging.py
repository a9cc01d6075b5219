"""trainkeep's default log output: its lines reach stderr even when the application configured no logging.

Like Lightning and Ray, the ``trainkeep`` logger gets a handler of its own (one line per record, on stderr)
that prints only while the application has configured no logging: once the root logger has a handler
(``logging.basicConfig``, pytest, a framework), this handler stays silent and the records go where the
application sends them, once. ``TRAINKEEP_LOG_LEVEL`` (a level name such as ``WARNING`` or ``DEBUG``) sets the
level of the ``trainkeep`` logger; the default is INFO, so the resume line and restarts are shown.
"""

from __future__ import annotations

import logging
import os
import sys

LEVEL_ENV = "TRAINKEEP_LOG_LEVEL"
FORMAT = "trainkeep %(levelname)s: %(message)s"


class _DefaultHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Write records to the current ``sys.stderr``, only while no handler is configured on the root logger."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers or any(h is not self for h in logging.getLogger("trainkeep").handlers):
            return  # the application configured logging: the record goes to its handlers instead
        self.setStream(sys.stderr)  # follow a replaced sys.stderr
        super().emit(record)


def install_default_handler() -> None:
    """Give the ``trainkeep`` logger its default stderr handler and level, once, unless it has handlers already.

    A ``TRAINKEEP_LOG_LEVEL`` that is not a level name is ignored with a warning on that handler.
    """
    package = logging.getLogger("trainkeep")
    if any(isinstance(h, _DefaultHandler) for h in package.handlers):
        return
    name = os.environ.get(LEVEL_ENV, "").strip().upper()
    level = logging.getLevelName(name) if name else logging.INFO
    if not package.handlers:
        package.addHandler(_DefaultHandler())
    if not isinstance(level, int):
        level = logging.INFO
        package.warning("%s=%r is not a logging level (DEBUG, INFO, WARNING, ERROR, CRITICAL); using INFO",
                        LEVEL_ENV, os.environ.get(LEVEL_ENV))
    if name or package.level == logging.NOTSET:
        package.setLevel(level)
