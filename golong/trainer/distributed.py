"""The torchrun world as the loop sees it: init, rank, and gathering plain Python objects."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    node_rank: int = 0  # torchrun's GROUP_RANK: which node (agent) this process runs on

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world() -> World:
    """Join the torchrun world (gloo on CPU, nccl on CUDA), or stay a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return World(rank=int(os.environ.get("RANK", "0")), size=size, local_rank=local_rank,
                 node_rank=int(os.environ.get("GROUP_RANK", "0")))


def all_gather_objects(obj, world: World) -> list:
    """Every rank's `obj`, in rank order (a list of one in a world of one)."""
    if world.size == 1:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out
