"""The script the launcher tests start with torchrun (or as srun-like processes): a run of N epochs.

Arguments (JSON in argv[1]): storage, name, epochs, out (a directory for each rank's log), timeout (the
report timeout), kill (rank, epoch): that rank SIGKILLs itself before reporting that epoch in the first
attempt; epochs_by_rank ({rank: epochs}): uneven reports; mode: the upload mode (SYNC, ASYNC); skip_init (rank): that rank never calls init and exits; fail (rank, epoch): that rank raises;
validate: every checkpoint is validated (validate_shards) and the run keeps the best by the validation's score.
Each rank appends one JSON line per event to out/rank<R>.jsonl.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time

import trainkeep


def validate_shards(checkpoint: trainkeep.Checkpoint) -> dict:
    """Score a checkpoint from its files: both ranks' shards must be there; epoch 1 scores best."""
    with checkpoint.as_directory() as d:
        shards = sorted(f for f in os.listdir(d) if f.startswith("shard_"))
        epoch = json.load(open(os.path.join(d, "shard_0.json")))["epoch"]
    return {"val": 10 - abs(epoch - 1), "val_shards": len(shards)}


def main() -> None:
    args = json.loads(sys.argv[1])
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "-1")))
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    log_path = os.path.join(args["out"], f"rank{rank}.jsonl")

    def log(**event: object) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps({"attempt": attempt, **event}) + "\n")

    if args.get("skip_init") == rank:
        log(event="skipped init")
        time.sleep(args.get("skip_sleep", 0))
        return
    validate = bool(args.get("validate"))
    config = trainkeep.RunConfig(name=args.get("name"), storage_path=args["storage"],
                                 report_timeout_s=args.get("timeout", 60),
                                 checkpoint_config=trainkeep.CheckpointConfig(
                                     num_to_keep=1, checkpoint_score_attribute="val") if validate else None)
    context = trainkeep.init(config, validation_config=trainkeep.ValidationConfig(validate_shards) if validate else None)
    log(event="joined", world_rank=context.get_world_rank(), world_size=context.get_world_size(),
        local_rank=context.get_local_rank(), local_world_size=context.get_local_world_size(),
        node_rank=context.get_node_rank(), experiment=context.get_experiment_name())
    start = trainkeep.get_checkpoint()
    first = 0
    if start is not None:
        with open(os.path.join(start.path, f"shard_{rank}.json")) as f:
            first = json.load(f)["epoch"] + 1
    log(event="start", checkpoint=start.path if start else None, first=first)
    for epoch in range(first, args.get("epochs_by_rank", {}).get(str(rank), args["epochs"])):
        if args.get("kill") == [rank, epoch] and attempt == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        if args.get("fail") == [rank, epoch]:
            raise RuntimeError(f"rank {rank} fails at epoch {epoch}")
        tmp = tempfile.mkdtemp()  # removed by trainkeep after the upload in ASYNC mode (its default)
        with open(os.path.join(tmp, f"shard_{rank}.json"), "w") as f:
            json.dump({"epoch": epoch, "rank": rank}, f)
        mode = trainkeep.CheckpointUploadMode[args.get("mode", "SYNC")]
        trainkeep.report({"epoch": epoch, "rank": rank}, checkpoint=trainkeep.Checkpoint.from_directory(tmp),
                         checkpoint_upload_mode=mode, validation=validate)
        if mode is trainkeep.CheckpointUploadMode.SYNC:
            shutil.rmtree(tmp)
        latest = trainkeep.get_checkpoint()
        log(event="reported", epoch=epoch, latest=latest.path if latest else None)
    trainkeep.shutdown()
    log(event="done")


if __name__ == "__main__":
    main()
