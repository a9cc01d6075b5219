"""The structure of docs/architecture.md holds: layers, no cycles, one error hierarchy, no bare builtins raised.

The layer and cycle contracts live in pyproject.toml ([tool.importlinter]) and are run here with import-linter,
so `make test` fails on a layering violation as `make lint` does.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import subprocess
import sys
from pathlib import Path

import grimp

import trainkeep
import trainkeep.errors as errors

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(trainkeep.__file__).resolve().parent

# A builtin raised on purpose, with the reason it is not a TrainkeepError.
ALLOWED_BUILTIN_RAISES = {
    # Python's own protocols: a module's or a proxy's __getattr__ must raise AttributeError.
    ("__init__.py", "AttributeError"),
    ("torch.py", "AttributeError"),
    # Inside the storage layer OSError subclasses are the signals of the OS itself (a conditional write that
    # found the object); the layer's public methods turn them into StorageError.
    ("_internal/storage/remote.py", "FileExistsError"),
    ("_internal/storage/s3.py", "FileExistsError"),
    ("_internal/storage/lease.py", "FileExistsError"),
    ("_internal/storage/base.py", "FileNotFoundError"),
    # A branch the type checker cannot see is unreachable.
    ("cli/common.py", "AssertionError"),
}

BUILTIN_EXCEPTIONS = {name for name, value in vars(builtins).items()
                      if isinstance(value, type) and issubclass(value, BaseException)}


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout


def test_no_module_imports_the_package_root() -> None:
    graph = grimp.build_graph("trainkeep")
    importers = sorted(m for m in graph.find_modules_that_directly_import("trainkeep") if m != "trainkeep.__main__")
    assert importers == [], f"modules importing the package root (import from the module that defines it): {importers}"


def test_every_error_class_is_a_trainkeep_error_with_a_builtin_base() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, BaseException) and c.__module__ == errors.__name__]
    assert len(classes) > 20
    for cls in classes:
        if cls is errors.TrainingInterrupted:  # a KeyboardInterrupt, so that nothing catches it by accident
            assert issubclass(cls, KeyboardInterrupt)
            continue
        assert issubclass(cls, errors.TrainkeepError), cls
        if cls is not errors.TrainkeepError:
            assert any(base.__module__ == "builtins" and base is not Exception for base in cls.__mro__), cls


def test_no_error_class_is_defined_outside_errors_py() -> None:
    found = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel == "errors.py" or rel.startswith("testing/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                found.append(f"{rel}:{node.lineno} {node.name}")
    assert found == []


def test_no_bare_builtin_exception_is_raised_from_library_code() -> None:
    found = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("testing/"):  # the fault injectors raise what a real OS would
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = call.id if isinstance(call, ast.Name) else None
            if name in BUILTIN_EXCEPTIONS and (rel, name) not in ALLOWED_BUILTIN_RAISES:
                found.append(f"{rel}:{node.lineno} raise {name}")
    assert found == []
