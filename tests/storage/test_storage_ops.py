"""The Storage surface itself, on every backend: atomic writes, reads, listings, deletes, logs, put_tree."""

from __future__ import annotations

import os

import pytest
import xxhash

from trainkeep._internal.storage import FsspecStorage


def digest(data: bytes) -> str:
    return xxhash.xxh3_128(data).hexdigest()


def test_write_atomic_replaces_whole_content_and_leaves_no_temp_files(backend):
    storage, root = backend.storage()
    storage.makedirs(f"{root}/d")
    storage.write_atomic(f"{root}/d/doc.json", b"old content, longer than the new one")
    storage.write_atomic(f"{root}/d/doc.json", b"new")
    assert storage.read_bytes(f"{root}/d/doc.json") == b"new"
    assert storage.listdir(f"{root}/d") == ["doc.json"]
    assert storage.size(f"{root}/d/doc.json") == 3


def test_missing_paths_are_file_not_found_or_empty_never_storage_errors(backend):
    storage, root = backend.storage()
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"{root}/nope.json")
    assert storage.exists(f"{root}/nope.json") is False
    assert storage.listdir(f"{root}/no-such-dir") == []
    storage.delete_file(f"{root}/nope.json")  # missing is not an error
    storage.delete_tree(f"{root}/no-such-dir")
    assert storage.read_log(f"{root}/history.jsonl") == (b"", [])


def test_listdir_names_files_and_subdirectories_once_sorted(backend, make_files):
    storage, root = backend.storage()
    src = make_files({"b.bin": b"b", "a.bin": b"a", "sub/c.bin": b"c", "sub/deeper/d.bin": b"d"})
    storage.makedirs(f"{root}/ck")
    storage.put_tree(src, f"{root}/ck", ["a.bin", "b.bin", "sub/c.bin", "sub/deeper/d.bin"])
    assert storage.listdir(f"{root}/ck") == ["a.bin", "b.bin", "sub"]
    assert storage.isdir(f"{root}/ck/sub") and not storage.isdir(f"{root}/ck/a.bin")
    storage.delete_tree(f"{root}/ck/sub")
    assert storage.listdir(f"{root}/ck") == ["a.bin", "b.bin"]
    assert not storage.exists(f"{root}/ck/sub/deeper/d.bin")


def test_put_tree_returns_sizes_and_checksums_of_what_it_stored(backend, make_files):
    """Includes a file of three S3 parts and an empty file."""
    storage, root = backend.storage()
    files = {"model.bin": os.urandom(17 * 1024 * 1024 + 17), "empty.bin": b"", "sub/x.txt": b"x" * 1000}
    src = make_files(files)
    storage.makedirs(f"{root}/ck")
    put = storage.put_tree(src, f"{root}/ck", sorted(files))
    entries = {e.path: e for e in put.entries}
    assert (put.stats.nbytes, put.stats.files) == (sum(map(len, files.values())), len(files))
    for rel, data in files.items():
        assert (entries[rel].size, entries[rel].checksum) == (len(data), digest(data))
        assert storage.read_bytes(f"{root}/ck/{rel}") == data
        assert storage.checksum(f"{root}/ck/{rel}") == (len(data), digest(data))
    assert sorted(os.listdir(src)) == ["empty.bin", "model.bin", "sub"]  # a copy leaves the source alone


def test_put_tree_never_overwrites_an_existing_file(backend, make_files):
    storage, root = backend.storage()
    storage.makedirs(f"{root}/ck")
    storage.write_atomic(f"{root}/ck/model.bin", b"first writer")
    src = make_files({"model.bin": b"second writer"})
    with pytest.raises(FileExistsError):
        storage.put_tree(src, f"{root}/ck", ["model.bin"])
    assert storage.read_bytes(f"{root}/ck/model.bin") == b"first writer"


def test_put_tree_move_consumes_the_source_and_keeps_checksums(backend, make_files):
    storage, root = backend.storage()
    files = {"model.bin": os.urandom(2 * 1024 * 1024), "sub/opt.bin": b"optimizer"}
    src = make_files(files)
    storage.makedirs(f"{root}/ck")
    entries = {e.path: e for e in storage.put_tree(src, f"{root}/ck", sorted(files), move=True).entries}
    for rel, data in files.items():
        assert entries[rel].checksum == digest(data)
        assert storage.read_bytes(f"{root}/ck/{rel}") == data
        assert not os.path.exists(os.path.join(src, rel))


def test_download_copies_one_file_and_returns_its_checksum(backend, tmp_path):
    storage, root = backend.storage()
    data = os.urandom(9 * 1024 * 1024 + 5)  # more than one chunk
    storage.makedirs(root)
    storage.write_atomic(f"{root}/blob", data)
    size, checksum = storage.download(f"{root}/blob", str(tmp_path / "blob"))
    assert (size, checksum) == (len(data), digest(data))
    assert (tmp_path / "blob").read_bytes() == data


def test_log_reads_back_every_durable_append_in_order_from_a_new_storage(backend):
    storage, root = backend.storage()
    storage.makedirs(root)
    log = f"{root}/history.jsonl"
    rows = [b'{"round": %d}\n' % i for i in range(7)]
    for i, row in enumerate(rows):
        storage.append(log, row, durable=i in (2, 6))
    base, parts = backend.storage()[0].read_log(log)  # another writer's view: only what is on storage
    assert base + b"".join(parts) == b"".join(rows)


def test_listings_are_fresh_after_another_client_writes(backend):
    """s3fs caches listings; a write by another client (process) must still be seen at once."""
    storage, root = backend.storage()
    storage.makedirs(f"{root}/d")
    storage.write_atomic(f"{root}/d/one", b"1")
    assert storage.listdir(f"{root}/d") == ["one"]  # fills the listing cache
    other = FsspecStorage(backend.fresh_fs()) if isinstance(storage, FsspecStorage) else backend.storage()[0]
    other.write_atomic(f"{root}/d/two", b"2")
    assert storage.listdir(f"{root}/d") == ["one", "two"]
    assert storage.exists(f"{root}/d/two") and storage.read_bytes(f"{root}/d/two") == b"2"
    other.delete_file(f"{root}/d/one")
    assert storage.listdir(f"{root}/d") == ["two"]
    assert not storage.exists(f"{root}/d/one")
