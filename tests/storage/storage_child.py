"""A second process for the conformance suite: it holds a run, or dies by SIGKILL at a chosen point.

Usage (the store comes from TK_BACKEND, TK_ROOT and, for s3, TK_S3_ENDPOINT):

    storage_child.py hold RUN                 open RUN, print "ready <pid>", wait to be killed
    storage_child.py die RUN POINT            commit checkpoint_000000, then report checkpoint_000001 and
                                              SIGKILL ourselves at POINT: "after-put" (files written, no
                                              manifest) or "after-manifest" (manifest written, nothing after)
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from typing import Any

import trainkeep as tk
from trainkeep._internal.core.layout import MANIFEST_NAME


def filesystem() -> Any:
    if os.environ["TK_BACKEND"] == "s3":
        import s3fs

        return s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=os.environ["TK_S3_ENDPOINT"],
                                 anon=False, client_kwargs={"region_name": "us-east-1"})
    return None


def source(content: bytes) -> tk.Checkpoint:
    root = tempfile.mkdtemp()
    for name in ("model.bin", "sub/optim.bin"):
        os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
        with open(os.path.join(root, name), "wb") as f:
            f.write(content + name.encode())
    return tk.Checkpoint.from_directory(root)


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    command, run = sys.argv[1], sys.argv[2]
    url = f"{os.environ['TK_ROOT'].rstrip('/')}/{run}"
    manager = tk.CheckpointManager(url, storage_filesystem=filesystem())
    if command == "hold":
        print(f"ready {os.getpid()}", flush=True)
        time.sleep(600)
        return
    point = sys.argv[3]
    manager.report({"step": 0}, checkpoint=source(b"zero"))
    storage = manager.storage
    if point == "after-put":
        put_tree = storage.put_tree

        def put_then_die(*args: Any, **kwargs: Any) -> Any:
            put_tree(*args, **kwargs)
            die()

        storage.put_tree = put_then_die  # type: ignore[method-assign]
    else:
        write_atomic = storage.write_atomic

        def write_then_die(path: str, data: bytes) -> None:
            write_atomic(path, data)
            if path.endswith("checkpoint_000001/" + MANIFEST_NAME):
                die()

        storage.write_atomic = write_then_die  # type: ignore[method-assign]
    manager.report({"step": 1}, checkpoint=source(b"one"))
    raise SystemExit("the child should have died")


if __name__ == "__main__":
    main()
