"""Reading one checkpoint's manifest and verifying the checkpoint's files against it.

``trainkeep verify``, resuming (:func:`trainkeep._internal.engine.run.choose_resume`) and the tests use these;
nothing here writes to storage.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainkeep._internal.core.layout import MANIFEST_NAME, METADATA_NAME, is_reserved_file
from trainkeep._internal.core.manifest import Manifest, parse_manifest
from trainkeep._internal.storage import Storage, iter_files
from trainkeep.errors import CorruptRunError, IncompatibleRunError


def manifest_path(storage: Storage, run_path: str, name: str) -> str:
    return storage.join(run_path, name, MANIFEST_NAME)


def read_manifest(storage: Storage, run_path: str, name: str) -> Manifest:
    """Read and validate the manifest of checkpoint ``name``.

    Raises:
        FileNotFoundError when there is none; CorruptRunError when it is invalid or names another checkpoint.
    """
    path = manifest_path(storage, run_path, name)
    manifest = parse_manifest(storage.read_bytes(path), path)
    if manifest.name != name:
        raise CorruptRunError(path, f"manifest names checkpoint {manifest.name!r} but lies in {name!r}")
    return manifest


UNREADABLE = "unreadable"  # the kind of a Problem that is a read error, not damage


@dataclass(frozen=True)
class Problem:
    """One reason a checkpoint does not verify: damage (``kind`` "corrupt") or a read error ("unreadable")."""

    checkpoint: str
    path: str
    reason: str
    kind: str = "corrupt"

    def __str__(self) -> str:
        return f"{self.checkpoint}: {self.path}: {self.reason}"


def verify_checkpoint(storage: Storage, run_path: str, name: str, *, checksums: bool = True) -> list[Problem]:
    """Re-read a checkpoint's files against its manifest; return every problem found ([] when it verifies).

    Detects a missing or invalid manifest, missing files, wrong sizes, wrong checksums and files that the
    manifest does not list. A file (or the manifest) that cannot be read (permissions, an I/O error) is a
    problem of kind :data:`UNREADABLE`, and the other files are still checked. The user metadata file is exempt:
    ``Checkpoint.set_metadata`` may change it. Raises nothing for a file's problem.
    """
    try:
        manifest = read_manifest(storage, run_path, name)
    except FileNotFoundError:
        return [Problem(name, MANIFEST_NAME, "manifest is missing")]
    except (CorruptRunError, IncompatibleRunError) as exc:
        return [Problem(name, MANIFEST_NAME, str(getattr(exc, "reason", exc)))]
    except OSError as exc:
        return [Problem(name, MANIFEST_NAME, f"cannot be read: {exc}", UNREADABLE)]
    root = storage.join(run_path, name)
    problems: list[Problem] = []
    for entry in manifest.files:
        if entry.path != METADATA_NAME:
            problem = _verify_file(storage, f"{root}/{entry.path}", name, entry.path, entry.size,
                                   entry.checksum if checksums else None)
            problems += [problem] if problem else []
    listed = {f.path for f in manifest.files}
    try:
        for rel in iter_files(storage, root):
            if rel not in listed and not is_reserved_file(rel) and rel != METADATA_NAME:
                problems.append(Problem(name, rel, "file is not listed in the manifest"))
    except OSError as exc:
        problems.append(Problem(name, ".", f"cannot list the checkpoint's files: {exc}", UNREADABLE))
    return problems


def _verify_file(storage: Storage, path: str, name: str, rel: str, size: int, checksum: str | None) -> Problem | None:
    try:
        actual = storage.size(path)
        if actual != size:
            return Problem(name, rel, f"size is {actual} bytes, manifest says {size}")
        if checksum is not None:
            _, digest = storage.checksum(path)
            if digest != checksum:
                return Problem(name, rel, f"checksum is {digest}, manifest says {checksum}")
    except FileNotFoundError:
        return Problem(name, rel, "file is missing")
    except OSError as exc:
        return Problem(name, rel, f"cannot be read: {exc}", UNREADABLE)
    return None


def corrupt_reason(problems: list[Problem]) -> str | None:
    """Return the reason to mark a checkpoint corrupt for ``problems``, or None when none of them is damage.

    Read errors alone do not condemn a checkpoint: they may pass (permissions fixed, storage back).
    """
    damage = [p for p in problems if p.kind != UNREADABLE]
    if not damage:
        return None
    more = f" (+{len(damage) - 1} more)" if len(damage) > 1 else ""
    return f"{damage[0].path}: {damage[0].reason}{more}"
