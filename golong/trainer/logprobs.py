"""Per-token log-probabilities (and entropy) from final hidden states, one chunk of tokens at a time.

With Qwen3's vocabulary (V = 151,936) the logits of T = 16K response tokens are ~10 GB in fp32, and
autograd through `log_softmax` keeps that and its gradient (> 18 GiB). `token_logprobs` never holds
more than one [chunk_size, V] block: forward keeps only per-token scalars (log-prob, entropy and the
log-sum-exp), and backward recomputes each chunk's logits and applies the closed-form gradient, so
memory grows with chunk_size * V, not T * V.

Why not DeepSpeed ALST (`deepspeed.runtime.sequence_parallel.ulysses_sp`):
- `TiledFusedLogitsLoss` fuses a *scalar* loss into the tiling and runs backward inside forward. The
  policy loss needs per-token log-probs first (ratios against old log-probs, clipping, IcePop,
  step-wide denominators, statistics), and the old log-probs are computed without any backward.
- `sequence_tiled_compute` returns one tensor (we need log-prob and entropy), gives a gradient to one
  input only (the weight's would arrive as a side effect of autograd on a leaf parameter, not as the
  gradient of our `weight` argument), and recomputes through autograd, which keeps the softmax and
  its gradient per tile; the closed form below works in place in two [chunk, V] buffers.
Like ALST, the weight's gradient reaches ZeRO once per call (summed over chunks here), so no
`ds_grad_is_ready` juggling is needed.
"""
from __future__ import annotations

import torch

DEFAULT_CHUNK_SIZE = 1024  # at V = 151,936 in fp32 one [chunk, V] block is 0.58 GiB; backward uses ~2.5 of them


def _scaled_logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """(C, V) logits / temperature in at least fp32 (the matmul runs in the model's dtype, as in HF)."""
    logits = (hidden @ weight.T).to(torch.promote_types(hidden.dtype, torch.float32))
    return logits.div_(temperature) if temperature != 1.0 else logits


class _ChunkedTokenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, temperature, chunk_size, with_entropy):
        n = hidden.shape[0]
        out_dtype = torch.promote_types(hidden.dtype, torch.float32)
        logp = hidden.new_empty(n, dtype=out_dtype)
        lse = hidden.new_empty(n, dtype=out_dtype)
        entropy = hidden.new_empty(n, dtype=out_dtype) if with_entropy else None
        for start in range(0, n, chunk_size):
            rows = slice(start, start + chunk_size)
            z = _scaled_logits(hidden[rows], weight, temperature)  # (C, V)
            lse[rows] = torch.logsumexp(z, dim=-1)
            logp[rows] = z.gather(1, labels[rows, None]).squeeze(1) - lse[rows]
            if with_entropy:
                log_p = z.sub_(lse[rows, None])  # in place: z becomes log softmax
                entropy[rows] = -torch.bmm(log_p.exp()[:, None, :], log_p[:, :, None]).view(-1)  # H = -sum p log p
            del z  # free this chunk's block before the next one is allocated
        ctx.save_for_backward(hidden, weight, labels, lse, entropy)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.set_materialize_grads(False)  # an unused entropy output arrives as None: skip its term
        return (logp, entropy) if with_entropy else logp

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy=None):
        hidden, weight, labels, lse, entropy = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        # the weight's gradient is summed over chunks; in fp32 so that bf16 chunks do not round each other away
        grad_weight = torch.zeros_like(weight, dtype=torch.promote_types(weight.dtype, torch.float32)) if need_weight else None
        if grad_logp is None and grad_entropy is None:
            return grad_hidden, grad_weight, None, None, None, None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            h = hidden[rows]
            log_p = _scaled_logits(h, weight, ctx.temperature).sub_(lse[rows, None])  # (C, V) log softmax
            grad = log_p.exp()  # p
            # d logp_y / dz = onehot(y) - p ;  d H / dz = -p * (log p + H)
            g_logp = grad_logp[rows, None] if grad_logp is not None else None
            if grad_entropy is not None:  # in place: log_p becomes the coefficient of p
                log_p.add_(entropy[rows, None]).mul_(-grad_entropy[rows, None])
                if g_logp is not None:
                    log_p.sub_(g_logp)
                grad.mul_(log_p)
            else:
                grad.mul_(-g_logp)
            if g_logp is not None:
                grad.scatter_add_(1, labels[rows, None], g_logp)
            if ctx.temperature != 1.0:
                grad.div_(ctx.temperature)  # z = logits / temperature
            grad = grad.to(weight.dtype)
            if need_hidden:
                grad_hidden[rows] = grad @ weight
            if need_weight:
                if grad.dtype == grad_weight.dtype:
                    grad_weight.addmm_(grad.T, h.to(grad.dtype))
                else:
                    grad_weight.add_(grad.T @ h)
            del log_p, grad  # free this chunk's blocks before the next one is allocated
        if need_weight and grad_weight.dtype != weight.dtype:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                   temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK_SIZE, with_entropy: bool = False):
    """log softmax(hidden @ weight.T / temperature)[t, labels[t]] for every token t, chunk by chunk.

    hidden (T, H), weight (V, H), labels (T,) int64 -> log-probs (T,) in fp32 (fp64 for fp64 inputs);
    with `with_entropy` also the entropy (T,) of each token's distribution. Differentiable in hidden and
    weight; the [T, V] logits are never whole: at most one [chunk_size, V] block lives at a time.
    `temperature` is the sampling temperature, so the log-probs are those of the sampling distribution.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden (T, H) and weight (V, H), got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels {tuple(labels.shape)} must be (T,) with T = {hidden.shape[0]}")
    if temperature <= 0 or chunk_size < 1:
        raise ValueError(f"temperature must be > 0 and chunk_size >= 1, got {temperature} and {chunk_size}")
    return _ChunkedTokenLogProbs.apply(hidden, weight, labels.long(), float(temperature), int(chunk_size), with_entropy)
