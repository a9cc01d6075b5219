"""The "Compatibility with Ray Train" section of docs/trainer.md names, for each difference, the test that pins it.

This keeps that list honest: every test it names exists, and every test in the two differences files is named
in the list (a pinned difference that the docs do not mention is a difference users are not told about).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALIASES = {"D1": "tests/ray_compat/test_v2_differences.py", "D2": "tests/ray_compat/test_doc_differences.py",
           "DS": "tests/trainer/test_datasets.py"}


def _section() -> str:
    text = (ROOT / "docs" / "trainer.md").read_text()
    start = text.index("## Compatibility with Ray Train")
    return text[start:text.index("\n## ", start + 1)]


def _named_tests() -> set[tuple[str, str]]:
    found = set()
    for where, name in re.findall(r"`((?:D1|D2|DS)|tests/[\w/]+\.py)::(\w+)`", _section()):
        found.add((ALIASES.get(where, where), name))
    return found


def _defined_tests(path: str) -> set[str]:
    return set(re.findall(r"^def (test_\w+)\(", (ROOT / path).read_text(), flags=re.M))


def test_every_test_the_compatibility_list_names_exists() -> None:
    named = _named_tests()
    assert len(named) > 30, named
    missing = sorted(f"{path}::{name}" for path, name in named if name not in _defined_tests(path))
    assert not missing, f"docs/trainer.md names tests that do not exist: {missing}"


def test_every_pinned_difference_is_in_the_compatibility_list() -> None:
    named = _named_tests()
    for path in (ALIASES["D1"], ALIASES["D2"]):
        unlisted = sorted(name for name in _defined_tests(path) if (path, name) not in named)
        assert not unlisted, f"{path} pins differences that docs/trainer.md does not list: {unlisted}"
