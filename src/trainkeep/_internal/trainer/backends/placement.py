"""Pure placement logic of the Ray executor: the bundle of one worker, whether a cluster can ever hold the
group, and the ranks of workers from the nodes they landed on. Plain data in, plain data out; no Ray here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from trainkeep._internal.core.config import ScalingConfig
from trainkeep._internal.trainer.protocol import Layout, Placement
from trainkeep.errors import ConfigError

_EPSILON = 1e-9  # Ray keeps resource amounts in fixed point; 0.1 * 3 must fit in 0.3


class Landing(NamedTuple):
    """Where one worker actor landed: its node's id and IP, the GPU ids Ray gave it, a port free there."""

    node_id: str
    node_ip: str
    gpu_ids: list[str]
    port: int = 0


def worker_bundle(scaling: ScalingConfig) -> dict[str, float]:
    """Return the resources one worker reserves: ``resources_per_worker``, 1 CPU by default, 1 GPU with use_gpu.

    Zero amounts are dropped (Ray refuses them in a bundle).
    """
    bundle = {"CPU": 1.0}
    if scaling.use_gpu:
        bundle["GPU"] = 1.0
    bundle.update({key: float(amount) for key, amount in (scaling.resources_per_worker or {}).items()})
    return {key: amount for key, amount in bundle.items() if amount > 0}


def fitting_workers(bundle: Mapping[str, float], nodes: Sequence[Mapping[str, float]]) -> int:
    """Return how many workers of ``bundle`` the ``nodes`` (total resources of each) could hold at once."""
    total = 0
    for node in nodes:
        counts = [math.floor(node.get(key, 0.0) / amount + _EPSILON) for key, amount in bundle.items()]
        total += min(counts) if counts else 0
    return total


def check_fits(scaling: ScalingConfig, nodes: Sequence[Mapping[str, float]]) -> None:
    """Refuse a request that the cluster, even idle, could never hold.

    Raises:
        ConfigError (a ValueError) naming what was asked and what every node has.
    """
    bundle = worker_bundle(scaling)
    if scaling.placement_strategy == "STRICT_PACK":  # every worker on one node
        fits = max((fitting_workers(bundle, [node]) for node in nodes), default=0)
    elif scaling.placement_strategy == "STRICT_SPREAD":  # each worker on a node of its own
        fits = sum(1 for node in nodes if fitting_workers(bundle, [node]) >= 1)
    else:
        fits = fitting_workers(bundle, nodes)
    if fits >= scaling.num_workers:
        return
    shown = ", ".join(_describe_node(node) for node in nodes) or "no live nodes"
    raise ConfigError(
        f"ScalingConfig(num_workers={scaling.num_workers}, use_gpu={scaling.use_gpu}, resources_per_worker="
        f"{scaling.resources_per_worker!r}, placement_strategy={scaling.placement_strategy!r}) asks for "
        f"{scaling.num_workers} workers of {_format(bundle)} each, "
        f"but this Ray cluster could hold at most {fits} of them: it has {len(nodes)} node(s): {shown}. "
        "Ask for fewer workers or smaller resources, or add nodes."
    )


def _describe_node(node: Mapping[str, float]) -> str:
    shown = {key: amount for key, amount in node.items()
             if not key.startswith("node:") and key not in ("memory", "object_store_memory")
             and "_group_" not in key}
    return _format(shown)


def _format(resources: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{key}: {amount:g}" for key, amount in sorted(resources.items())) + "}"


def assign_ranks(landings: Sequence[Landing]) -> tuple[list[int], Layout]:
    """Give ranks to the workers that landed at ``landings`` (by actor index): the workers of a node get
    consecutive ranks, nodes in the order their first worker appears.

    Returns ``order`` (``order[rank]`` is the actor index of that rank) and the layout by rank.
    """
    nodes: list[str] = []
    for landing in landings:
        if landing.node_id not in nodes:
            nodes.append(landing.node_id)
    order = sorted(range(len(landings)), key=lambda i: (nodes.index(landings[i].node_id), i))
    per_node = {node: [i for i in order if landings[i].node_id == node] for node in nodes}
    placements = []
    for actor in order:
        node = landings[actor].node_id
        placements.append(Placement(nodes.index(node), per_node[node].index(actor), len(per_node[node])))
    node_ips = [landings[actor].node_ip for actor in order]
    gpu_ids = [landings[actor].gpu_ids for actor in order]
    ports = [landings[actor].port for actor in order]
    return order, Layout(placements, node_ips, ports[0], gpu_ids, ports)


def visible_devices(layout: Layout) -> list[str | None]:
    """Return each rank's ``CUDA_VISIBLE_DEVICES``: every GPU given to the group's workers on its node.

    Each worker then uses device ``local_rank`` among them, one per local rank (as torch.distributed expects);
    None for a rank without GPUs.
    """
    by_node: dict[int, set[str]] = {}
    for placement, ids in zip(layout.placements, layout.gpu_ids or [[]] * len(layout.placements), strict=True):
        by_node.setdefault(placement.node_rank, set()).update(ids)
    result: list[str | None] = []
    for placement in layout.placements:
        ids = sorted(by_node[placement.node_rank], key=lambda x: (len(x), x))
        result.append(",".join(ids) if ids else None)
    return result
