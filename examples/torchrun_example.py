"""Keep the checkpoints of a script started by torchrun (or srun, mpirun) with trainkeep.

    torchrun --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29500 --max-restarts 1 \
        examples/torchrun_example.py --storage /tmp/trainkeep_results --epochs 5

Every rank calls ``trainkeep.init()``; rank 0 is the single writer of the run. Each epoch every rank reports
its metrics and its own shard file; the files of both ranks land in the same checkpoint. Killed and restarted
(``--max-restarts``), the script resumes from the latest committed checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import trainkeep


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", default="~/trainkeep_results")
    parser.add_argument("--name", default="torchrun_example")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    # 1. Join the run: every rank, once. Name the run so that a restart resumes it.
    context = trainkeep.init(trainkeep.RunConfig(name=args.name, storage_path=args.storage,
                                                 checkpoint_config=trainkeep.CheckpointConfig(num_to_keep=2)))
    rank = context.get_world_rank()

    # 2. Resume: the latest committed checkpoint holds every rank's shard.
    start, state = 0, {"weights": 0.0}
    checkpoint = trainkeep.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            with open(os.path.join(directory, f"shard_{rank}.json")) as f:
                state = json.load(f)
        start = state["epoch"] + 1

    # 3. Train, and report every epoch: the k-th report of every rank forms round k.
    for epoch in range(start, args.epochs):
        state = {"epoch": epoch, "weights": state["weights"] + 1.0}
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, f"shard_{rank}.json"), "w") as f:
                json.dump(state, f)
            trainkeep.report({"epoch": epoch, "loss": 1.0 / (epoch + 1)},
                             checkpoint=trainkeep.Checkpoint.from_directory(tmp))

    # 4. Wait for the other ranks; rank 0 closes the run (this also runs at interpreter exit).
    trainkeep.shutdown()


if __name__ == "__main__":
    main()
