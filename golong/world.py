"""The distributed world: who this process is, and the few collectives golong uses.

    world = init_world()                     # once per process, before any engine
    world.rank, world.size, world.is_main    # torchrun's ranks, or a world of one
    world.all_gather_objects(obj)            # every rank's obj, in rank order
    world.exchange_objects([to_0, to_1, ...]) # point to point: what each rank sent to this one
    world.all_reduce_sum([a, b])             # element-wise sums over ranks, as floats
    world.barrier(); world.broadcast(obj)    # rank 0's obj on every rank

Every component that needs to know its rank takes a `World` (the loop, the rollout collector, the
checkpointer, the engines). Nothing else reads RANK/WORLD_SIZE from the environment.

Where a rank sits in the parallel grids is one `ParallelLayout`, built once per run from the World and
the config's sizes (`ParallelLayout.of(world, tp=rollout.tensor_parallel_size,
sp=trainer.sequence_parallel_size)`) and passed to the engines and the planner:

    layout.rollout_dp_rank, layout.leads_tp_group   # vLLM's TP groups: which share of the prompts, one copy kept
    layout.dp_rank, layout.dp_size, layout.sp_rank  # the trainer's SP groups: which micro-batches, which shard

vLLM's shutdown destroys the default process group (RolloutEngine.close); a RolloutEngine built after
that (calibration's second model) first rejoins the world (`rejoin_world`): vLLM would otherwise make a
group of its own tensor-parallel size and the ranks could not meet.

A world of one (plain `python`, no torchrun) still gets a process group, backed by an in-memory
HashStore: DeepSpeed's ZeRO-3 (zero.Init, the engine) needs torch.distributed even alone, and it reads
RANK, LOCAL_RANK and WORLD_SIZE from the environment, so those are set to 0/0/1. The collectives of a
world of one never touch torch.distributed, so they keep working after vLLM's shutdown destroys the
default process group (RolloutEngine.close).
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelLayout:
    """This rank's place in the run's two grids, both of consecutive ranks: vLLM's tensor-parallel groups
    (tp ranks generate one share of the prompts together) and the trainer's Ulysses sequence-parallel
    groups (sp ranks train one row together). Sizes are checked once, here (`check`), which config
    validation calls, so `--dry-run` names the key."""

    world_size: int
    rank: int
    tp: int = 1  # rollout.tensor_parallel_size
    sp: int = 1  # trainer.sequence_parallel_size
    sp_group: object = None  # the SP process group, once the PolicyEngine has built it (None for sp = 1)

    def __post_init__(self):
        self.check(self.world_size, self.tp, self.sp)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size}")

    @staticmethod
    def check(world_size: int, tp: int, sp: int) -> None:
        """Both sizes positive and dividing the world; a ConfigError naming the key and the fix."""
        from golong.configlib import invalid

        for key, size, why in (("rollout.tensor_parallel_size", tp, "vLLM carves tensor-parallel groups of "
                                "consecutive ranks out of the world"),
                               ("trainer.sequence_parallel_size", sp, "an SP group is that many consecutive ranks")):
            if size < 1 or world_size % size:
                divisor = max(d for d in range(1, world_size + 1) if world_size % d == 0 and d <= max(size, 1))
                raise invalid(key, f"{size} does not divide the {world_size} ranks of this run ({why})",
                              f"use a divisor of {world_size}, e.g. {divisor}, or change --nproc_per_node/--nnodes")

    @classmethod
    def of(cls, world: World, tp: int = 1, sp: int = 1) -> ParallelLayout:
        return cls(world_size=world.size, rank=world.rank, tp=tp, sp=sp)

    @classmethod
    def for_component(cls, layout: ParallelLayout | None, world: World, **sizes: int) -> ParallelLayout:
        """The run's `layout` for a component configured with `sizes` (tp= and/or sp=), checked to agree
        with them; without one (a component built on its own: tests, eval) a layout of `world` and `sizes`."""
        if layout is None:
            return cls.of(world, **sizes)
        for name, size in sizes.items():
            if getattr(layout, name) != size:
                raise ValueError(f"the run's layout has {name}={getattr(layout, name)}, the component's config {size}")
        return layout

    # vLLM's tensor-parallel groups
    @property
    def rollout_dp_size(self) -> int:  # engines (TP groups): the prompts are dealt over them
        return self.world_size // self.tp

    @property
    def rollout_dp_rank(self) -> int:  # this rank's TP group
        return self.rank // self.tp

    @property
    def leads_tp_group(self) -> bool:  # the other ranks of its TP group get the same responses
        return self.rank % self.tp == 0

    # the trainer's sequence-parallel groups
    @property
    def sp_rank(self) -> int:  # this rank's shard of every row (0 .. sp-1)
        return self.rank % self.sp

    @property
    def dp_size(self) -> int:  # SP groups: the data-parallel ranks micro-batches are planned over
        return self.world_size // self.sp

    @property
    def dp_rank(self) -> int:  # this rank's SP group
        return self.dp_rank_of(self.rank)

    def dp_rank_of(self, rank: int) -> int:
        """The SP group (data-parallel rank) of any rank of the world."""
        return rank // self.sp

    @property
    def counts_once(self) -> bool:
        """Whether this rank speaks for its SP group in sums over ranks (denominator, statistics)."""
        return self.sp_rank == 0


@dataclass(frozen=True)
class World:
    rank: int  # global rank, 0 .. size - 1
    size: int  # number of processes (torchrun's WORLD_SIZE)
    local_rank: int  # rank on this node; picks the GPU
    local_size: int  # processes on this node (torchrun's LOCAL_WORLD_SIZE)
    node_rank: int  # which node this is, 0 .. num_nodes - 1 (torchrun's GROUP_RANK)
    backend: str  # "nccl" on CUDA, "gloo" on CPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def num_nodes(self) -> int:
        return max(self.size // max(self.local_size, 1), 1)

    @property
    def _collective(self) -> bool:
        return self.size > 1

    def all_gather_objects(self, obj) -> list:
        """Every rank's `obj` (picklable), in rank order; a list of one in a world of one."""
        if not self._collective:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def exchange_objects(self, outgoing: list) -> list:
        """outgoing[d] (picklable) goes to rank d alone; returns what every rank sent to this one, in rank
        order. One scatter per rank: each object crosses the network once, to its destination only."""
        if len(outgoing) != self.size:
            raise ValueError(f"exchange_objects needs one object per rank ({self.size}), got {len(outgoing)}")
        if not self._collective:
            return list(outgoing)
        incoming = []
        for src in range(self.size):
            box = [None]
            dist.scatter_object_list(box, outgoing if self.rank == src else None, src=src)
            incoming.append(box[0])
        return incoming

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over ranks, in float64 (exact for counts below 2**53)."""
        if not self._collective:
            return [float(v) for v in values]
        device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")
        buf = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(buf)
        return buf.tolist()

    def barrier(self) -> None:
        if self._collective:
            dist.barrier()

    def broadcast(self, obj, src: int = 0):
        """Rank `src`'s `obj` (picklable) on every rank."""
        if not self._collective:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def init_world() -> World:
    """Join torchrun's world (gloo on CPU, nccl on CUDA), or make a world of one; idempotent."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:  # a plain process
        for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1")):
            os.environ[name] = value  # DeepSpeed reads them even alone
    world = World(rank=_env_int("RANK", 0), size=_env_int("WORLD_SIZE", 1), local_rank=_env_int("LOCAL_RANK", 0),
                  local_size=_env_int("LOCAL_WORLD_SIZE", _env_int("WORLD_SIZE", 1)),
                  node_rank=_env_int("GROUP_RANK", 0), backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        # CUDA: bind the group to this rank's GPU (NCCL's collectives then need no guess of the device)
        device_id = {"device_id": torch.device("cuda", world.local_rank)} if backend == "nccl" else {}
        if world.size > 1:
            dist.init_process_group(backend, **device_id)  # torchrun's MASTER_ADDR/MASTER_PORT rendezvous
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, **device_id)
        atexit.register(_destroy_group)  # torch warns (and NCCL may leak) when a process exits without it
    return world


_rejoins = 0  # process groups re-created after a teardown, in this process


def rejoin_world(world: World) -> None:
    """Re-create `world`'s default process group if something destroyed it (vLLM's shutdown); collective.

    torch resets its group names when the default group is destroyed, so a second rendezvous in the same
    store (torchrun's agent store, which outlives the group) would read the first one's keys: each rejoin
    meets under a prefix of its own."""
    global _rejoins
    if world.size == 1 or dist.is_initialized():
        return
    _rejoins += 1
    store, _, _ = next(dist.rendezvous("env://", world.rank, world.size))  # torchrun's MASTER_ADDR/MASTER_PORT
    device_id = {"device_id": torch.device("cuda", world.local_rank)} if world.backend == "nccl" else {}
    dist.init_process_group(world.backend, store=dist.PrefixStore(f"golong-rejoin-{_rejoins}", store),
                            rank=world.rank, world_size=world.size, **device_id)


def _destroy_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def current_world() -> World:
    """The world as torch.distributed sees it now, for code called without one (a world of one when
    no process group exists, e.g. a unit test or `golong export`)."""
    if dist.is_available() and dist.is_initialized():
        size = dist.get_world_size()
        return World(rank=dist.get_rank(), size=size, local_rank=_env_int("LOCAL_RANK", 0),
                     local_size=_env_int("LOCAL_WORLD_SIZE", size), node_rank=_env_int("GROUP_RANK", 0),
                     backend=dist.get_backend())
    return World(rank=0, size=1, local_rank=0, local_size=1, node_rank=0,
                 backend="nccl" if torch.cuda.is_available() else "gloo")
