"""The local fast paths: kernel copy with the checksum in the same pass (and each fallback), hand-off by link
and unlink on one filesystem, and copy-then-delete across filesystems."""

from __future__ import annotations

import os

import pytest
import xxhash

from trainkeep._internal.storage import LocalStorage
from trainkeep._internal.storage.fastcopy import COPY_METHODS, copy_file, hash_file, move_file, same_device


@pytest.fixture
def blob(tmp_path, seed):
    data = random_bytes(seed, 8 * 1024 * 1024 * 2 + 12345)  # more than two chunks, not a multiple
    (tmp_path / "src.bin").write_bytes(data)
    return tmp_path / "src.bin", data


def random_bytes(seed: int, n: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("first", [name for name, _ in COPY_METHODS])
def test_every_copy_method_copies_and_hashes_in_one_pass(blob, tmp_path, first):
    src, data = blob
    methods = tuple(m for m in COPY_METHODS if m[0] == first)
    seen: list[int] = []
    size, digest = copy_file(str(src), str(tmp_path / "dest.bin"), seen.append, methods)
    assert (size, digest) == (len(data), xxhash.xxh3_128(data).hexdigest())
    assert (tmp_path / "dest.bin").read_bytes() == data and sum(seen) == len(data)


def test_an_unsupported_kernel_copy_falls_back_for_the_rest_of_the_file(blob, tmp_path):
    src, data = blob
    calls: list[str] = []

    def refuses(fd_in: int, fd_out: int, count: int, offset: int) -> int:
        calls.append("refused")
        raise OSError(95, "Operation not supported")  # EOPNOTSUPP

    methods = (("refuses", refuses),) + tuple(m for m in COPY_METHODS if m[0] == "read_write")
    copy_file(str(src), str(tmp_path / "dest.bin"), None, methods)
    assert calls == ["refused"] and (tmp_path / "dest.bin").read_bytes() == data


def test_copy_never_overwrites_and_reports_a_missing_source(blob, tmp_path):
    src, _ = blob
    (tmp_path / "dest.bin").write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        copy_file(str(src), str(tmp_path / "dest.bin"))
    assert (tmp_path / "dest.bin").read_bytes() == b"keep me"
    with pytest.raises(FileNotFoundError):
        copy_file(str(tmp_path / "nope"), str(tmp_path / "other.bin"))


def test_move_links_then_unlinks_and_checksums(blob, tmp_path):
    src, data = blob
    inode = os.stat(src).st_ino
    size, digest = move_file(str(src), str(tmp_path / "moved.bin"))
    assert (size, digest) == (len(data), xxhash.xxh3_128(data).hexdigest())
    assert not src.exists() and os.stat(tmp_path / "moved.bin").st_ino == inode  # renamed, not copied
    assert hash_file(str(tmp_path / "moved.bin")) == (size, digest)
    (tmp_path / "again.bin").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        move_file(str(tmp_path / "again.bin"), str(tmp_path / "moved.bin"))
    assert (tmp_path / "moved.bin").read_bytes() == data


def test_put_tree_move_across_filesystems_copies_then_deletes(tmp_path):
    if not os.path.isdir("/dev/shm") or same_device("/dev/shm", str(tmp_path)):
        pytest.skip("needs /dev/shm on another filesystem than tmp_path")
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as src:
        with open(os.path.join(src, "m.bin"), "wb") as f:
            f.write(b"weights")
        (tmp_path / "ck").mkdir()
        storage = LocalStorage()
        put = storage.put_tree(src, str(tmp_path / "ck"), ["m.bin"], move=True)
        assert put.entries[0].checksum == xxhash.xxh3_128(b"weights").hexdigest()
        assert not os.path.exists(os.path.join(src, "m.bin"))
        assert put.stats.moved is False
    assert (tmp_path / "ck" / "m.bin").read_bytes() == b"weights"


def test_hash_file_of_an_empty_file(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    assert hash_file(str(tmp_path / "empty")) == (0, xxhash.xxh3_128(b"").hexdigest())
