"""Export the policy as a Hugging Face model folder (safetensors shards, config, generation config, tokenizer)
that transformers and vLLM load.

Under ZeRO-3 every rank holds a slice of each parameter. The export walks the model one decoder layer at a
time, gathers that layer's full parameters (`deepspeed.zero.GatheredParameters`, collective), and streams
them into safetensors shards of at most `max_shard_size` bytes written by rank 0. So no rank ever holds more
of the model than one layer on its device, and rank 0 at most one shard plus a copy of one layer in host
memory (bench/checkpoint_export.py measures it). An unpartitioned model (no ZeRO-3, or no torch.distributed at all)
goes through the same path with nothing to gather.

The folder is written under a temporary name and renamed into place: a reader (or a later resume) sees the
previous export or the new one, never a half-written one.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
import re
import shutil

import torch
from safetensors.torch import save_file

from golong.world import World, current_world

SHARD_TMP_NAME = "shard-{index:05d}.safetensors"  # renamed to HF's model-0000i-of-0000N names once N is known
_LAYER_PREFIX = re.compile(r"^(.*?\.\d+)\.")  # "model.layers.7.mlp.up_proj.weight" -> "model.layers.7"


def _parse_size(size: int | str) -> int:
    """Bytes from 5000000, "500MB" or "2GB" (decimal units, as Hugging Face's max_shard_size)."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*", size.upper())
    if not match:
        raise ValueError(f"max_shard_size {size!r}: expected bytes or a size such as '500MB' or '5GB'")
    return int(float(match.group(1)) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[match.group(2)])


def _layer_groups(module: torch.nn.Module):
    """(names, params) per decoder layer, in model order; parameters outside numbered layers go one by one.

    `named_parameters` lists a tied parameter (lm_head tied to the embedding) once, under its first name,
    which is what HF checkpoints store.
    """
    def layer_of(item):
        match = _LAYER_PREFIX.match(item[0])
        return match.group(1) if match else item[0]

    for _, group in itertools.groupby(module.named_parameters(), key=layer_of):
        names, params = zip(*group)
        yield list(names), list(params)


def _persistent_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Buffers that belong in a checkpoint (ZeRO-3 does not partition buffers)."""
    found = {}
    for prefix, sub in module.named_modules():
        for name, buf in sub.named_buffers(recurse=False):
            if buf is not None and name not in sub._non_persistent_buffers_set:
                found[f"{prefix}.{name}" if prefix else name] = buf
    return found


class _ShardWriter:
    """Collects tensors and writes a safetensors file each time the next tensor would pass the size bound."""

    def __init__(self, folder: str, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[list[str]] = []  # tensor names of each written file, in order
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[name] = tensor
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        if not self.pending:
            return
        save_file(self.pending, os.path.join(self.folder, SHARD_TMP_NAME.format(index=len(self.files))),
                  metadata={"format": "pt"})
        self.files.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> None:
        """Rename the files to HF's names; write model.safetensors.index.json when there are several."""
        self.flush()
        count = len(self.files)
        weight_map = {}
        for index, names in enumerate(self.files):
            final = "model.safetensors" if count == 1 else f"model-{index + 1:05d}-of-{count:05d}.safetensors"
            os.rename(os.path.join(self.folder, SHARD_TMP_NAME.format(index=index)), os.path.join(self.folder, final))
            weight_map.update(dict.fromkeys(names, final))
        if count > 1:
            with open(os.path.join(self.folder, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, f, indent=2)


def export_hf(module: torch.nn.Module, tokenizer, out_dir: str, *, dtype: torch.dtype | None = None,
              max_shard_size: int | str = "5GB", world: World | None = None) -> str:
    """Write `module` (an HF PreTrainedModel, e.g. `engine.module`, ZeRO-3-partitioned or not) and `tokenizer`
    to `out_dir` as an HF model folder; return `out_dir`.

    Every rank must call it when the model is partitioned (gathering is collective); rank 0 writes.
    `dtype` casts the weights (default: the parameters' own dtype, bf16 under bf16 training).
    """
    from transformers.core_model_loading import revert_weight_conversion

    world = world or current_world()
    rank = world.rank
    partitioned = any(hasattr(p, "ds_id") for p in module.parameters())
    if partitioned:
        import deepspeed
    out_dir = os.path.normpath(out_dir)
    tmp_dir = f"{out_dir}.tmp"
    if rank == 0:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        os.makedirs(tmp_dir)
    writer = _ShardWriter(tmp_dir, _parse_size(max_shard_size))
    export_dtype = dtype or next(module.parameters()).dtype

    def to_cpu(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device="cpu", dtype=export_dtype if t.is_floating_point() else t.dtype, copy=True)

    for names, params in _layer_groups(module):
        gather = deepspeed.zero.GatheredParameters(params) if partitioned else contextlib.nullcontext()
        with gather:
            if rank == 0:
                layer = {name: to_cpu(p) for name, p in zip(names, params)}
        if rank == 0:
            # transformers 5 fuses some weights at load time (e.g. MoE experts into one tensor per layer);
            # reverting per layer writes the checkpoint layout transformers and vLLM load.
            for name, tensor in revert_weight_conversion(module, layer).items():
                writer.add(name, tensor.contiguous())
    if rank == 0:
        for name, buf in _persistent_buffers(module).items():
            writer.add(name, to_cpu(buf))
        writer.finish()
        _write_metadata(module, tokenizer, tmp_dir, export_dtype)
        _swap_into_place(tmp_dir, out_dir)
    world.barrier()  # the folder exists for every rank once export_hf returns
    return out_dir


def _write_metadata(module, tokenizer, folder: str, dtype: torch.dtype) -> None:
    """config.json (with the exported dtype and architecture, as save_pretrained writes them), the generation
    config, the tokenizer, and the model's own code for trust_remote_code models."""
    config = copy.deepcopy(module.config)
    config.dtype = str(dtype).removeprefix("torch.")
    config.architectures = [type(module).__name__]
    config.use_cache = True  # training turns the KV cache off; the exported model is for inference
    config.save_pretrained(folder)
    if getattr(module, "generation_config", None) is not None and module.can_generate():
        module.generation_config.save_pretrained(folder)
    if module.is_remote_code():
        from transformers.dynamic_module_utils import custom_object_save
        custom_object_save(module, folder, config=config)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def _swap_into_place(tmp_dir: str, out_dir: str) -> None:
    """Replace `out_dir` by `tmp_dir`: two renames, so a previous export stays whole until the new one is."""
    old_dir = f"{out_dir}.old"
    shutil.rmtree(old_dir, ignore_errors=True)
    if os.path.isdir(out_dir):
        os.rename(out_dir, old_dir)
    os.rename(tmp_dir, out_dir)
    shutil.rmtree(old_dir, ignore_errors=True)


def export_checkpoint(run_dir: str, out: str | None = None, best: bool = False) -> str:
    """`golong export`: an HF model folder from a run's latest checkpoint, or with `best` its best-validated
    one (trainer.save_best: checkpoints/best/), consolidated with DeepSpeed's zero_to_fp32, so no engine or
    accelerator is needed. Default `out`: RUN_DIR/hf (RUN_DIR/hf-best with `best`)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from golong.config import load_config
    from golong.trainer.checkpoint import BEST_DIR, RUN_STATE_FILE, Checkpointer

    config_file = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{config_file} not found. Fix: pass a run folder (a run's trainer.output_dir)")
    # validation settings off: exporting needs no validation file (the run's may have moved since)
    cfg = load_config(config_file, ["trainer.val_every=0", "data.val_files=[]", "trainer.save_best=false"])
    checkpointer = Checkpointer(run_dir, cfg.trainer.keep_last)
    if best:
        latest = os.path.join(checkpointer.root, BEST_DIR)
        if not os.path.isfile(os.path.join(latest, RUN_STATE_FILE)):
            raise FileNotFoundError(f"no complete {latest}. Fix: export a run trained with trainer.save_best=true "
                                    "(and trainer.val_every), or export its latest checkpoint (without --best)")
    else:
        latest = checkpointer.latest(clean_up=False)  # the run may still be saving
    if latest is None:
        raise FileNotFoundError(f"no complete checkpoint under {run_dir}/checkpoints. Fix: export a run that has "
                                "saved one (trainer.save_every, or the end of training)")
    root, tag = os.path.split(latest)
    with open(os.path.join(latest, "run_state.json"), encoding="utf-8") as f:
        world_size = json.load(f)["world_size"]
    shards = [n for n in os.listdir(latest) if n.startswith("zero_pp_rank_") and n.endswith("_model_states.pt")]
    if len(shards) < world_size:  # a node-local output_dir holds only its own node's shards
        raise FileNotFoundError(f"{latest} holds {len(shards)} of the {world_size} ranks' ZeRO shards (a run with a "
                                "node-local output_dir). Fix: copy this step folder's files from every node into one "
                                "folder and export from there")
    # The engine trained LogProbModel(model): its parameter names carry the wrapper's "model." prefix.
    state_dict = {name.removeprefix("model."): tensor
                  for name, tensor in get_fp32_state_dict_from_zero_checkpoint(root, tag=tag).items()}
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    loaded = model.load_state_dict(state_dict, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()  # shares embed_tokens' tensor
    if set(loaded.missing_keys) - tied or loaded.unexpected_keys:
        raise RuntimeError(f"checkpoint {latest} does not match {cfg.model.path}: missing "
                           f"{sorted(set(loaded.missing_keys) - tied)[:5]}, unexpected {loaded.unexpected_keys[:5]}")
    out = out or os.path.join(run_dir, "hf-best" if best else "hf")
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    return export_hf(model, tokenizer, out)
