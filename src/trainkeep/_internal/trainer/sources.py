"""Source file names for the functions a worker receives by value, so that its tracebacks show the user's lines.

cloudpickle ships functions defined in ``__main__`` (and closures, lambdas) by value and names their code
``<dynamic-code>``, so a worker's traceback would show no file and no source line. The driver records where
each such code object was defined (:func:`code_files`, keyed by name and first line); the worker gives the
unpickled functions those file names back (:func:`restore_files`). Workers run on the driver's machine, so
the traceback module then reads the source lines from the user's own file.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from typing import Any

CodeFiles = dict[tuple[str, int], str]
_DYNAMIC = "<dynamic-code>"


def code_files(fn: Any) -> CodeFiles:
    """Return ``(co_name, co_firstlineno) -> co_filename`` for every code object reachable from ``fn``."""
    found: CodeFiles = {}
    for function in _functions(fn, lambda code: not code.co_filename.startswith("<")):
        for code in _codes(function.__code__):
            found.setdefault((code.co_name, code.co_firstlineno), code.co_filename)
    return found


def restore_files(fn: Any, files: CodeFiles) -> None:
    """Give the by-value functions reachable from ``fn`` the file names in ``files`` (in place, in a worker)."""
    if not files:
        return
    for function in _functions(fn, lambda code: code.co_filename == _DYNAMIC):
        function.__code__ = _relabel(function.__code__, files)


def _relabel(code: types.CodeType, files: CodeFiles) -> types.CodeType:
    consts = tuple(_relabel(c, files) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    filename = files.get((code.co_name, code.co_firstlineno), code.co_filename)
    return code.replace(co_filename=filename, co_consts=consts)


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _functions(root: Any, wanted: Callable[[types.CodeType], bool]) -> Iterator[types.FunctionType]:
    """Yield the functions reachable from ``root`` through closures, globals and classes, whose code is wanted.

    Only globals of the same module as the function are followed: what cloudpickle ships by value.
    """
    seen: set[int] = set()
    stack: list[Any] = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, types.MethodType):
            stack.append(obj.__func__)
        elif isinstance(obj, type):
            stack.extend(vars(obj).values())
        elif isinstance(obj, (staticmethod, classmethod)):
            stack.append(obj.__func__)
        elif isinstance(obj, types.FunctionType) and wanted(obj.__code__):
            yield obj
            stack.extend(cell.cell_contents for cell in obj.__closure__ or () if _filled(cell))
            module = obj.__module__
            for name in {n for code in _codes(obj.__code__) for n in code.co_names}:
                value = obj.__globals__.get(name)
                if getattr(value, "__module__", None) == module:
                    stack.append(value)


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True
