"""Attention over a packed row: several sequences concatenated, none attending to another.

A packed micro-batch is one row `(1, T)` holding sequences back to back, position ids restarting at 0
for each. transformers' "sdpa"/"eager" paths given only position ids let tokens attend across
sequence boundaries (ENVIRONMENT.md), and a dense block-diagonal mask costs O(T^2). Instead the
model runs with an attention implementation that receives the sequence boundaries as the kwargs
transformers forwards to every attention call (`cu_seq_lens_q/k`, `max_length_q/k`, the names its
flash_attention_2 path uses for `flash_attn_varlen_func`) and attends sequence by sequence:

- CPU: `golong_per_sequence`, exact causal SDPA per sequence (cost: sum of length^2).
- CUDA: flash-attn's varlen kernel through transformers' `flash_attention_2` when flash-attn is
  installed, else `golong_torch_varlen` (PyTorch's own `varlen_attn`).

    attn_implementation = resolve_attention("auto", torch.device("cpu"))   # before from_pretrained
    model(input_ids, position_ids=..., **packed_attention_kwargs(cu_seqlens, max_seqlen))
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

PER_SEQUENCE = "golong_per_sequence"
TORCH_VARLEN = "golong_torch_varlen"


def packed_attention_kwargs(cu_seqlens: torch.Tensor, max_seqlen: int) -> dict:
    """The forward kwargs that carry a packed row's sequence boundaries down to every attention call."""
    return {"cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens,
            "max_length_q": max_seqlen, "max_length_k": max_seqlen}


def per_sequence_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                           sliding_window=None, cu_seq_lens_q=None, **kwargs):
    """Exact causal attention run separately on each sequence of a packed row.

    query (1, Hq, T, D), key/value (1, Hkv, T, D) as transformers hands them; returns (1, T, Hq, D).
    """
    if cu_seq_lens_q is None:
        raise ValueError(f"{PER_SEQUENCE} attention needs the packed row's boundaries: pass "
                         "golong.trainer.attention.packed_attention_kwargs(...) to the model's forward")
    if sliding_window is not None:
        raise NotImplementedError(f"{PER_SEQUENCE} attention does not implement sliding-window layers")
    if query.shape[0] != 1:
        raise ValueError(f"a packed micro-batch is one row, got batch size {query.shape[0]}")
    bounds = cu_seq_lens_q.tolist()
    out = torch.empty_like(query)
    for start, end in zip(bounds[:-1], bounds[1:]):
        out[:, :, start:end] = F.scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
            dropout_p=dropout if module.training else 0.0, is_causal=True, scale=scaling,
            enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def torch_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                           sliding_window=None, cu_seq_lens_q=None, cu_seq_lens_k=None,
                           max_length_q=None, max_length_k=None, **kwargs):
    """CUDA only: PyTorch's FlashAttention varlen kernel over the packed row (no flash-attn package)."""
    from torch.nn.attention.varlen import varlen_attn

    if cu_seq_lens_q is None:
        raise ValueError(f"{TORCH_VARLEN} attention needs packed_attention_kwargs(...) in the forward call")
    if dropout or sliding_window is not None:
        raise NotImplementedError(f"{TORCH_VARLEN} attention supports neither dropout nor sliding windows")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D)
    cu = cu_seq_lens_q.to(torch.int32)
    out = varlen_attn(q, k, v, cu, cu_seq_lens_k.to(torch.int32), max_length_q, max_length_k,
                      scale=scaling, window_size=(-1, 0), enable_gqa=q.shape[1] != k.shape[1])
    return out.unsqueeze(0), None


AttentionInterface.register(PER_SEQUENCE, per_sequence_attention)
AttentionInterface.register(TORCH_VARLEN, torch_varlen_attention)


def resolve_attention(choice: str, device: torch.device) -> str:
    """The `attn_implementation` for `from_pretrained` that gives packed rows exact attention."""
    if choice == "per_sequence" or (choice == "auto" and device.type == "cpu"):
        return PER_SEQUENCE
    # --- CUDA-only branch: varlen FlashAttention kernels -------------------------------------
    if device.type != "cuda":
        raise ValueError(f"model.attention={choice!r} needs CUDA; on {device.type} use 'per_sequence' or 'auto'")
    has_flash_attn = importlib.util.find_spec("flash_attn") is not None
    if choice == "flash_attention_2" and not has_flash_attn:
        raise ValueError("model.attention='flash_attention_2' needs the flash-attn package; "
                         "install it or use 'torch_varlen' (PyTorch's own varlen kernel)")
    if choice == "flash_attention_2" or (choice == "auto" and has_flash_attn):
        return "flash_attention_2"
    return TORCH_VARLEN
