"""Validation of the names users supply (checkpoint_dir_name, RunConfig.name) and of manifest file paths."""

from __future__ import annotations

import os
import posixpath

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import trainkeep as tk
from trainkeep._internal.core.layout import (
    MAX_FILE_NAME_BYTES,
    MAX_FILE_PATH_BYTES,
    MAX_NAME_LENGTH,
    default_checkpoint_name,
    file_name_problem,
    file_path_problem,
    is_reserved_file,
    is_skipped_file,
    validate_checkpoint_name,
    validate_relative_path,
    validate_run_name,
)
from trainkeep._internal.storage import LocalStorage

RUN = "/storage/runs/exp"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a/b", "path separator"),
        ("/abs", "path separator"),
        ("a\\b", "path separator"),
        ("C:\\x", "path separator"),
        ("..", "'..'"),
        (".", "'..'"),
        ("a..b", "'..'"),
        ("ckpt\x00", "NUL"),
        ("ckpt\n", "control character"),
        ("", "empty"),
        (" ckpt", "whitespace"),
        ("ckpt ", "whitespace"),
        (".hidden", "leading '.'"),
        (".trainkeep", "reserved prefix"),
        (".trainkeep_manifest.json", "reserved prefix"),
        ("trainkeep_run.json", "reserved prefix"),
        ("trainkeep_run_2", "reserved prefix"),
        ("history.jsonl", "reserved prefix"),
        ("ckpt.trainkeep_tmp", "temporary files"),
        ("x" * (MAX_NAME_LENGTH + 1), f"{MAX_NAME_LENGTH + 1} characters"),
    ],
)
def test_bad_checkpoint_names_are_refused_naming_value_and_rule(name: str, reason: str) -> None:
    with pytest.raises(tk.InvalidCheckpointNameError) as exc:
        validate_checkpoint_name(name)
    assert isinstance(exc.value, ValueError)
    message = str(exc.value)
    assert "checkpoint_dir_name" in message and reason in message
    assert repr(name) in message or f"{len(name)} characters" in message


@pytest.mark.parametrize("name", [3, None, b"ckpt", ["a"]])
def test_non_string_names_are_refused(name: object) -> None:
    with pytest.raises(ValueError, match="must be a string"):
        validate_checkpoint_name(name)


@pytest.mark.parametrize("name", ["checkpoint_000001", "epoch-3", "best.pt", "x" * MAX_NAME_LENGTH, "ünï cødé",
                                  "a.b.c", "trainkeep"])
def test_good_checkpoint_names_pass_unchanged(name: str) -> None:
    assert validate_checkpoint_name(name) == name


def test_run_names_follow_the_same_rules_but_may_use_our_file_prefixes() -> None:
    assert validate_run_name("trainkeep_run-2026-01-01_00-00-00").startswith("trainkeep_run")
    for bad in ("a/b", "..", "", "\x00", ".hidden"):
        with pytest.raises(tk.InvalidCheckpointNameError, match="RunConfig.name"):
            validate_run_name(bad)


def test_default_checkpoint_names_sort_by_round_and_are_valid() -> None:
    names = [default_checkpoint_name(i) for i in (0, 7, 123456, 1234567)]
    assert names[:3] == ["checkpoint_000000", "checkpoint_000007", "checkpoint_123456"]
    assert names[3] == "checkpoint_1234567"
    assert all(validate_checkpoint_name(n) == n for n in names)


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a\\b", "a\x00", "", "a/",
                                  "..", 5])
def test_unsafe_relative_paths_are_refused(path: object) -> None:
    with pytest.raises(tk.InvalidCheckpointNameError):
        validate_relative_path(path)


@pytest.mark.parametrize("path", ["model.pt", "sub/dir/shard-0.bin", ".metadata.json", "a..b/c"])
def test_safe_relative_paths_pass(path: str) -> None:
    assert validate_relative_path(path) == path


def test_reserved_files_are_ours_only() -> None:
    assert is_reserved_file(".trainkeep_manifest.json")
    assert is_reserved_file("sub/.trainkeep_manifest.json.1234abcd.trainkeep_tmp")
    assert not is_reserved_file(".metadata.json")
    assert not is_reserved_file("trainkeep/model.pt")


_names = st.text(st.characters(codec="utf-8"), max_size=MAX_NAME_LENGTH + 5) | st.text(
    st.sampled_from("./\\\x00 ab.trainkeep_-~:"), max_size=12
)


_SEED = os.environ.get("SEED")


@hypothesis_seed(int(_SEED) if _SEED else 0)
@settings(max_examples=400, derandomize=_SEED is None, suppress_health_check=[HealthCheck.too_slow])
@given(_names)
@example("..")
@example("a/../..")
@example("/")
@example(" ")
def test_fuzz_every_name_is_refused_or_stays_inside_the_run(name: str) -> None:
    try:
        validate_checkpoint_name(name)
    except tk.InvalidCheckpointNameError:
        return
    joined = LocalStorage().join(RUN, name)
    assert posixpath.dirname(joined) == RUN
    assert posixpath.normpath(joined) == joined
    assert os.path.basename(joined) == name
    assert not is_reserved_file(name)


# ---------------------------------------------------------------------------- the names of checkpoint files


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "not a usable file name"),
        (".", "not a usable file name"),
        ("..", "not a usable file name"),
        ("a\\b", "backslash"),
        ("a\nb", "control character '\\n'"),
        ("a\x00b", "control character"),
        ("\x7f", "control character"),
        ("\x9b", "control character"),
        ("a\u2028", "control character"),
        (os.fsdecode(b"\xff\xfe"), "not valid UTF-8 (bytes b'\\xff\\xfe')"),
        ("é" * 128, "256 bytes long"),
        (".trainkeep_x", "reserved"),
        ("x.trainkeep_tmp", "reserved"),
    ],
)
def test_file_names_that_cannot_round_trip_have_a_reason(name: str, reason: str) -> None:
    problem = file_name_problem(name)
    assert problem is not None and reason in problem


@pytest.mark.parametrize("name", ["model.pt", "x" * MAX_FILE_NAME_BYTES, "名前 😀", " a b ", "a*b?[c]", "a:b",
                                  ".metadata.json", ".hidden", "trainkeep_run.json", "~$#%&"])
def test_file_names_that_round_trip_pass(name: str) -> None:
    assert file_name_problem(name) is None


def test_reserved_names_are_refused_for_directories_too() -> None:
    assert file_name_problem(".trainkeep_cache", is_dir=True) is not None
    assert file_name_problem(".trainkeep_manifest.json", is_dir=True) is not None  # would block the manifest
    assert file_name_problem(".trainkeep_manifest.json") is None  # a manifest of ours: skipped, not refused


def test_skipped_files_are_our_manifest_and_hidden_temp_files() -> None:
    assert is_skipped_file(".trainkeep_manifest.json")
    assert is_skipped_file("sub/.trainkeep_manifest.json")
    assert is_skipped_file(".metadata.json.1234abcd.trainkeep_tmp")
    assert is_skipped_file("deep/.0123456789abcdef.trainkeep_tmp")
    assert not is_skipped_file("mine.trainkeep_tmp")  # refused instead: a user's file is never dropped silently
    assert not is_skipped_file(".trainkeep_other")
    for name in (".trainkeep_manifest.json", ".metadata.json.1234abcd.trainkeep_tmp"):
        assert is_reserved_file(name) and file_name_problem(name) is None


def test_long_file_paths_are_refused() -> None:
    assert file_path_problem("a/" * (MAX_FILE_PATH_BYTES // 2 - 1) + "bb") is None
    problem = file_path_problem("a/" * (MAX_FILE_PATH_BYTES // 2) + "b")
    assert problem is not None and f"at most {MAX_FILE_PATH_BYTES}" in problem


@settings(max_examples=300, derandomize=_SEED is None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(st.characters(codec="utf-8"), min_size=1, max_size=80))
def test_fuzz_an_accepted_file_name_is_a_safe_manifest_path(name: str) -> None:
    """What the scan accepts, the manifest's own validation accepts too (the backslash bug was a mismatch)."""
    if file_name_problem(name) is None:
        assert validate_relative_path(name) == name
        assert validate_relative_path(f"dir/{name}") == f"dir/{name}"
        assert name.isprintable() or not any(c in name for c in "\n\r\t\x0b\x0c")
