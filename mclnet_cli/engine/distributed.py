"""DistributedDataParallel plumbing for ``torchrun`` launches.

``torchrun --nproc_per_node N -m mclnet_cli train ...`` sets ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``; :func:`init_distributed` reads them, joins the
process group (NCCL on CUDA, gloo on CPU) and picks this rank's device. A plain
launch is a world of one and touches nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mclnet_cli.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main rank writes files and shows progress."""
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """Read ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (defaults: a world of one)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers ({exc})") from exc
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"invalid distributed environment: RANK={rank} WORLD_SIZE={world}")
    return DistInfo(rank=rank, local_rank=local, world_size=world)


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; returns the info and this rank's device."""
    info = env_dist_info()
    if not info.enabled:
        return info, device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info, device


def cleanup_distributed(*, synchronize: bool = False) -> None:
    """Leave the process group.

    ``synchronize=True`` (every rank finished the same collectives) waits at a
    barrier first, so no rank tears its connections down while a peer's last
    collective is still in flight: with gloo that made the peer abort at exit
    (SIGABRT, "terminate called without an active exception"). A rank leaving on
    an error must not wait for peers that never get there, so it skips the barrier.
    """
    if dist.is_available() and dist.is_initialized():
        try:
            if synchronize:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (identity in a world of one)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def shard_bounds(count: int, info: DistInfo) -> tuple[int, int]:
    """``[start, stop)`` of this rank's contiguous share of ``count`` items (rank order = item order)."""
    per_rank, extra = divmod(count, info.world_size)
    start = info.rank * per_rank + min(info.rank, extra)
    return start, start + per_rank + (1 if info.rank < extra else 0)


def gather_objects(obj: Any) -> list[Any] | None:
    """Rank 0 gets every rank's ``obj`` in rank order, other ranks None (a world of one: ``[obj]``).

    Uses pickling between the job's own processes (trusted), never for files.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    parts: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, parts, dst=0)
    return parts


def broadcast_object(box: list[Any]) -> None:
    """Replace ``box[0]`` on every rank with rank 0's (in place; no-op outside a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
