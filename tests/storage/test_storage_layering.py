"""The storage package's own import graph: no cycles (type-checking imports included), and the Storage surface
is what the commit protocol needs, with no hidden per-call state."""

from __future__ import annotations

import ast
from pathlib import Path

import trainkeep._internal.storage as storage_pkg
from trainkeep._internal.storage.base import Storage

PACKAGE = Path(storage_pkg.__file__).resolve().parent


def storage_imports() -> dict[str, set[str]]:
    """Return, for each module of trainkeep._internal.storage, the modules of the package it imports (anywhere in it)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        name = path.stem
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trainkeep._internal.storage."):
                graph[name].add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                graph[name].update(a.name.split(".")[2] for a in node.names
                                   if a.name.startswith("trainkeep._internal.storage."))
    return graph


def test_no_module_of_the_storage_package_is_in_an_import_cycle():
    graph = storage_imports()
    graph.pop("__init__")

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    cycles = sorted(name for name in graph if reaches(name, name, {name}))
    assert cycles == []
    assert "parts" not in graph["base"] and "base" not in graph["parts"]


def test_the_storage_surface_has_no_hidden_transfer_state_and_no_unused_methods():
    surface = {name for name in dir(Storage) if not name.startswith("_")}
    assert surface.isdisjoint({"get_file", "delete_files", "record_transfer", "pop_transfer", "open_read",
                               "read_log_parts"})
    assert len(surface - {"fs", "is_local"}) == 20  # read_range: the window before the history mark (opening a run); seal: NO_UPLOAD files
