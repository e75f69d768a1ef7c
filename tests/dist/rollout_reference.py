"""transformers references for the rollout tests: greedy continuations and per-token log-probs."""
from __future__ import annotations

import torch


@torch.no_grad()
def round_to_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """Round every weight to bfloat16 and back, so the float32 reference sees the engine's weights."""
    for param in model.parameters():
        param.copy_(param.to(torch.bfloat16).float())
    return model


@torch.no_grad()
def greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy continuation, stopping at the generation config's EOS ids like vLLM."""
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens)
    return out[0, len(prompt):].tolist()


@torch.no_grad()
def token_logprobs(model, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    """(L,) log softmax(logits / T) of each response token, in float64 from the model's float32 logits."""
    ids = torch.tensor([prompt + response])
    logits = model(ids).logits[0, len(prompt) - 1: -1].double() / temperature
    return logits.log_softmax(-1).gather(-1, torch.tensor(response)[:, None])[:, 0]


@torch.no_grad()
def greedy_gap(model, prompt: list[int], tokens: list[int]) -> float:
    """How far `tokens` (e.g. vLLM's greedy continuation) are from greedy under `model`: the largest gap, over
    positions, between the best logit and the chosen token's logit, teacher-forced on `tokens`. 0 when
    every token is the argmax; a bf16 engine may pick the other side of a near-tie (a gap of ~1e-3)."""
    ids = torch.tensor([prompt + tokens])
    logits = model(ids).logits[0, len(prompt) - 1: -1]
    return (logits.max(-1).values - logits.gather(-1, torch.tensor(tokens)[:, None])[:, 0]).max().item()
