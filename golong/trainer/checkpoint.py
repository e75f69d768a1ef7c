"""Training checkpoints: the DeepSpeed engine plus the loop's run state, written atomically.

Layout under `<output_dir>/checkpoints/`:

    step_000010/                        one complete checkpoint (the state after step 10)
      zero_pp_rank_R_mp_rank_00_*.pt    DeepSpeed: each rank's ZeRO shard of weights, optimizer and scheduler
      rng_rank_00000.json ...           each rank's RNG states (python, numpy, torch CPU and CUDA)
      local_rank_00000.json ...         each rank's own loop state (streaming: its carried partial responses)
      run_state.json                    step, sampler position, loop extras; written last: the completion marker
    best/                               trainer.save_best: the best-validated checkpoint, the same files; never
                                        rotated by keep_last, never named by `latest`, never resumed from
    latest                              names the newest complete checkpoint, in DeepSpeed's own format,
                                        so DeepSpeed's tools (zero_to_fp32.py, load_checkpoint(tag=None)) work here
    zero_to_fp32.py                     DeepSpeed's recovery script (DeepSpeed copies it beside its checkpoints)

A checkpoint is written as `.tmp-step_000010/` and renamed only after every rank has written its files and
rank 0 has written run_state.json; `latest` is replaced after the rename, and older checkpoints are deleted
after that. A process killed at any moment therefore leaves the previous complete checkpoints intact, plus at
worst a `.tmp-*` folder that `latest()` ignores and removes.

Two layouts of `output_dir` across nodes are supported (`folder_layout` tells them apart at start-up):

- shared: every rank sees one folder (a shared filesystem); rank 0 does the folder's bookkeeping.
- per-node: each node has its own folder (node-local disks, same path or not); every node's first rank
  does the bookkeeping in its folder, which holds that node's ranks' shards and RNG files. DeepSpeed is
  told so (`checkpoint.use_node_local_storage`), and a resume checks that every node holds the checkpoint
  rank 0 chose. Files only rank 0 writes (config, metrics, the HF export) are on the first node only.

A folder shared by some ranks of a node and not others is refused at start-up.

Our own files are JSON (nothing to unpickle); DeepSpeed's shards are torch pickles that DeepSpeed loads itself.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from golong.world import World, current_world

logger = logging.getLogger("golong")

RUN_STATE_FILE = "run_state.json"  # written last inside a checkpoint: its presence marks the folder complete
LATEST_FILE = "latest"
TMP_PREFIX = ".tmp-"
BEST_DIR = "best"  # trainer.save_best's checkpoint (golong/trainer/validate.py)
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class RunState:
    """What the training loop needs, besides the engine, to continue exactly where it stopped.

    The loop's state is the same on every rank (rank 0's copy is saved). Each rank's RNG states are not
    in here: the Checkpointer captures them in `save` and restores them in `load`, per rank.
    """

    step: int  # optimizer steps completed; the next step to run is step + 1
    sampler: dict[str, Any] = field(default_factory=dict)  # the prompt sampler's state_dict() (JSON-able)
    extra: dict[str, Any] = field(default_factory=dict)  # anything else the loop carries across steps (JSON-able)
    local: dict[str, Any] = field(default_factory=dict)  # this rank's own state, saved per rank (JSON-able)


def capture_rng_state() -> dict[str, Any]:
    """This process's python, numpy and torch (CPU, and CUDA when present) RNG states, as JSON-able data."""
    version, mt_state, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        "python": [version, list(mt_state), gauss_next],
        "numpy": {**np_state, "state": {"key": np_state["state"]["key"].tolist(), "pos": np_state["state"]["pos"]}},
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`: afterwards every generator draws what it drew at capture time."""
    version, mt_state, gauss_next = state["python"]
    random.setstate((version, tuple(mt_state), gauss_next))
    np_state = state["numpy"]
    np.random.set_state({**np_state, "state": {"key": np.array(np_state["state"]["key"], dtype=np.uint32),
                                                "pos": np_state["state"]["pos"]}})
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


SHARED, PER_NODE = "shared", "per-node"


def folder_layout(output_dir: str, world: World) -> str:
    """SHARED when every rank sees the same `output_dir`, PER_NODE when each node sees its own.
    Collective (every rank calls it); creates the folder. Rank 0 writes a probe file with a fresh token and
    every rank looks for it: the ranks that see it must be exactly those of some set of whole nodes including
    rank 0's, and then either all nodes (shared) or rank 0's node alone (per-node)."""
    probe = os.path.join(output_dir, ".golong-layout-probe")
    token = world.broadcast(f"{os.getpid()}-{random.SystemRandom().getrandbits(64):x}" if world.is_main else None)
    if world.is_main or world.local_rank == 0:
        os.makedirs(output_dir, exist_ok=True)
    if world.is_main:
        _write_atomic(probe, token)
    world.barrier()
    seen = world.all_gather_objects((world.node_rank, _read_text(probe) == token))
    world.barrier()
    if world.is_main:
        os.remove(probe)
    nodes: dict[int, set[bool]] = {}
    for node, saw in seen:
        nodes.setdefault(node, set()).add(saw)
    if any(len(views) > 1 for views in nodes.values()):
        split = sorted(node for node, views in nodes.items() if len(views) > 1)
        raise RuntimeError(f"trainer.output_dir={output_dir} is the same folder for some ranks of node(s) {split} "
                           "and not for others. Fix: give every rank of a node the same output_dir, on a disk all "
                           "its processes see")
    if all(True in views for views in nodes.values()):
        return SHARED
    if [node for node, views in nodes.items() if True in views] == [seen[0][0]]:
        return PER_NODE
    raise RuntimeError(f"trainer.output_dir={output_dir} is shared by some nodes but not all. Fix: use one "
                       "folder on a filesystem every node mounts, or a node-local folder on every node")


def _write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old content or the new one, never a mix."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _fsync_dir(path: str) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpointer:
    """Saves and finds checkpoints in `<output_dir>/checkpoints`, keeping the newest `keep_last` complete ones.

    `save` and `load` are collective: every rank calls them (DeepSpeed's save and load are).
    """

    def __init__(self, output_dir: str, keep_last: int, world: World | None = None, layout: str = SHARED):
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        self.root = os.path.join(output_dir, "checkpoints")
        self.keep_last = keep_last
        self.world = world or current_world()
        self.layout = layout
        # the rank that does this folder's bookkeeping (cleanup, run_state.json, renames, `latest`)
        self.is_writer = self.world.local_rank == 0 if layout == PER_NODE else self.world.is_main

    @classmethod
    def for_run(cls, output_dir: str, keep_last: int, world: World) -> Checkpointer:
        """The run's checkpointer, its layout found by probing `output_dir` from every rank (collective)."""
        layout = folder_layout(output_dir, world)
        if layout == PER_NODE and world.is_main:
            logger.info("trainer.output_dir is node-local: each node keeps its own ranks' checkpoint shards; "
                        "config, metrics and hf/ are written on the first node")
        return cls(output_dir, keep_last, world, layout)

    def deepspeed_config(self, ds_config: dict) -> dict:
        """`ds_config` (trainer.deepspeed) with the storage option this layout needs: node-local folders
        make DeepSpeed write each node's shared parts on that node's first rank."""
        if self.layout != PER_NODE:
            return ds_config
        return {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "use_node_local_storage": True}}

    @staticmethod
    def dir_name(step: int) -> str:
        return f"step_{step:06d}"

    def _complete_steps(self) -> dict[int, str]:
        """step -> folder of every complete checkpoint (a step_* folder with its run_state.json)."""
        found = {}
        for name in os.listdir(self.root) if os.path.isdir(self.root) else []:
            match = _STEP_DIR.match(name)
            if match and os.path.isfile(os.path.join(self.root, name, RUN_STATE_FILE)):
                found[int(match.group(1))] = os.path.join(self.root, name)
        return found

    def latest(self, clean_up: bool = True) -> str | None:
        """The newest complete checkpoint folder, or None when there is none.

        Found by listing the folders, not by trusting the `latest` pointer (which may name a deleted folder).
        With `clean_up`, rank 0 also removes what a killed save left behind (`.tmp-*` folders, step folders
        without run_state.json) and repoints `latest`: only where no save is in flight (a run's start-up).
        Readers of a folder another run may be writing to (`golong export`) pass clean_up=False.
        """
        complete = self._complete_steps()
        newest = complete[max(complete)] if complete else None
        if clean_up and self.is_writer and os.path.isdir(self.root):
            for name in os.listdir(self.root):
                path = os.path.join(self.root, name)
                half_written = name.startswith(TMP_PREFIX) or (_STEP_DIR.match(name) and path not in complete.values())
                if half_written and os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
            pointer = os.path.join(self.root, LATEST_FILE)
            if newest is None:
                if os.path.exists(pointer):
                    os.remove(pointer)
            elif _read_text(pointer) != os.path.basename(newest):
                _write_atomic(pointer, os.path.basename(newest))
        return newest

    def resume_point(self) -> str | None:
        """The checkpoint every rank resumes from: rank 0's newest complete one (collective). In the
        per-node layout every node must hold it too, else the run stops here naming the nodes that do not."""
        chosen = self.world.all_gather_objects(self.latest())[0]
        if chosen is None:
            return None
        name = os.path.basename(chosen)
        local = os.path.join(self.root, name)
        missing = [rank for rank, ok in enumerate(self.world.all_gather_objects(
            os.path.isfile(os.path.join(local, RUN_STATE_FILE))))
                   if not ok]
        if missing:
            raise RuntimeError(f"rank 0 resumes from checkpoint {name}, but ranks {missing} have no complete {name} "
                               f"under their {self.root}. Fix: copy that step folder to those nodes, or start a new "
                               "trainer.output_dir")
        return local

    def save(self, engine, state: RunState, name: str | None = None) -> str:
        """Write a complete checkpoint of `engine` (a DeepSpeedEngine) and `state`; return its folder.

        Called by every rank: each writes its ZeRO shard and its RNG states; the folder's writer (rank 0, or
        each node's first rank in the per-node layout) then writes run_state.json, renames the folder into
        place, updates `latest` and deletes checkpoints beyond the newest `keep_last`.

        `name`: a folder other than step_<step> (BEST_DIR): it replaces the previous one of that name (kept whole
        until the new one is in place), and `latest` and the keep_last rotation leave it alone.
        """
        rank, world = self.world.rank, self.world.size
        step_folder = name is None
        name = name or self.dir_name(state.step)
        tmp_name = TMP_PREFIX + name
        tmp_dir, final_dir = os.path.join(self.root, tmp_name), os.path.join(self.root, name)
        if self.is_writer:
            os.makedirs(self.root, exist_ok=True)
            shutil.rmtree(tmp_dir, ignore_errors=True)  # left by a save killed at this very step
        self.world.barrier()

        engine.save_checkpoint(self.root, tag=tmp_name, save_latest=False)  # collective; ends with a barrier
        _write_atomic(os.path.join(tmp_dir, f"rng_rank_{rank:05d}.json"), json.dumps(capture_rng_state()))
        _write_atomic(os.path.join(tmp_dir, f"local_rank_{rank:05d}.json"), json.dumps(state.local))
        self.world.barrier()  # every rank's files are on disk

        if self.is_writer:
            _write_atomic(os.path.join(tmp_dir, RUN_STATE_FILE),
                          json.dumps({**{k: v for k, v in asdict(state).items() if k != "local"}, "world_size": world},
                                     indent=1))
            old_dir = os.path.join(self.root, f"{TMP_PREFIX}old-{name}")  # a .tmp-* folder: latest() removes it
            if os.path.isdir(final_dir):  # a run restarted without resuming re-saves a step; BEST_DIR is replaced
                shutil.rmtree(old_dir, ignore_errors=True)
                os.rename(final_dir, old_dir)
            os.rename(tmp_dir, final_dir)
            _fsync_dir(self.root)
            shutil.rmtree(old_dir, ignore_errors=True)
            if step_folder:
                _write_atomic(os.path.join(self.root, LATEST_FILE), name)  # last: it only ever names a complete folder
                self._delete_old()
        self.world.barrier()
        return final_dir

    def _delete_old(self) -> None:
        complete = self._complete_steps()
        for step in sorted(complete)[: -self.keep_last]:
            shutil.rmtree(complete[step])

    def load(self, path: str, engine) -> RunState:
        """Load checkpoint folder `path` into `engine` (weights, optimizer, lr scheduler), restore this
        rank's RNG states, and return the loop's RunState. Called by every rank, on a freshly built engine
        (DeepSpeed ZeRO-3 cannot load into an engine that has already trained)."""
        rank, world = self.world.rank, self.world.size
        with open(os.path.join(path, RUN_STATE_FILE), encoding="utf-8") as f:
            saved = json.load(f)
        if saved["world_size"] != world:
            raise RuntimeError(
                f"checkpoint {path} was written by {saved['world_size']} ranks but this run has {world}: ZeRO shards "
                f"are per rank. Resume with {saved['world_size']} ranks, or convert it with DeepSpeed's "
                f"universal-checkpoint tools, or start a new output_dir.")
        root, tag = os.path.split(os.path.normpath(path))
        loaded, _ = engine.load_checkpoint(root, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {path}")
        with open(os.path.join(path, f"rng_rank_{rank:05d}.json"), encoding="utf-8") as f:
            restore_rng_state(json.load(f))
        local_file = os.path.join(path, f"local_rank_{rank:05d}.json")  # absent in checkpoints from before streaming
        local = {}
        if os.path.isfile(local_file):
            with open(local_file, encoding="utf-8") as f:
                local = json.load(f)
        return RunState(step=saved["step"], sampler=saved["sampler"], extra=saved["extra"], local=local)
