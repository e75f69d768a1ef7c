"""The policy loss as it was before issue #26 (golong/trainer/loss.py at 73af5be), frozen: the reference
tests/test_loss.py holds the refactored loss to, bit for bit. Only the denominator is a stand-in
(`OldDenominator`: the old LossDenominator's fields, group_tokens a dict keyed by group_id). Do not edit."""
from __future__ import annotations

from typing import NamedTuple

import torch

from golong.trainer.config import IcePopConfig, PolicyLossConfig
from golong.trainer.loss import AGG_MODES, PolicyLossStats

_LOG_RATIO_LIMIT = 20.0


class OldDenominator(NamedTuple):
    agg_mode: str
    value: float
    group_tokens: dict[int, float] | None = None


def icepop_weights(k: torch.Tensor, seq_index: torch.Tensor, cfg: IcePopConfig) -> torch.Tensor:
    """(N,) importance weights correcting the rollout/trainer mismatch (section 5.1, Table 12).

    k_t = pi_old(y_t) / pi_rollout(y_t) is the trainer's probability of the sampled token over the
    rollout engine's (no gradient).  mask: w_t = k_t if low <= k_t <= high else 0 (IcePop's M(k);
    Table 12's "clip" mode is read as this masking: out-of-range tokens leave the loss).
    truncate: w_t = min(k_t, high) (truncated IS).  veto: every token of a sequence with any
    k_t < veto gets w_t = 0.  off: w_t = 1.
    """
    if cfg.mode == "off":
        return torch.ones_like(k)
    if cfg.mode == "mask":
        weights = torch.where((k >= cfg.low) & (k <= cfg.high), k, torch.zeros_like(k))
    elif cfg.mode == "truncate":
        weights = k.clamp(max=cfg.high)
    else:
        raise ValueError(f"unknown IcePop mode {cfg.mode!r}; valid: off, mask, truncate")
    return weights.masked_fill(_in_vetoed_sequence(k, seq_index, cfg.veto), 0.0)


def _in_vetoed_sequence(k: torch.Tensor, seq_index: torch.Tensor, veto: float) -> torch.Tensor:
    """(N,) whether the token's sequence has any token ratio below `veto` (0 turns the veto off)."""
    if veto <= 0 or not seq_index.numel():
        return torch.zeros_like(k, dtype=torch.bool)
    bad = torch.zeros(int(seq_index.max()) + 1, dtype=torch.bool, device=k.device)
    bad[seq_index[k < veto]] = True
    return bad[seq_index]


def aggregation_weights(token_mask: torch.Tensor, seq_index: torch.Tensor, denom: OldDenominator,
                        group_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) w_t such that the step's loss is sum_t w_t * l_t over all micro-batches and ranks.

    group-token-mean (Eq. 4):  w_t = m_t / (P * sum_{j in g} |o_j|)   g: the token's prompt group
    token-mean (DAPO):         w_t = m_t / sum_i |o_i|
    seq-mean-token-mean:       w_t = m_t / (|o_i| * N)
    constant-norm (Eq. 3):     w_t = m_t / (N * L)
    m_t is the token's loss mask (its response's loss_weight); |o_i| the length of its response; the
    sums run over the responses in the loss of the whole step; P is the number of prompt groups.
    """
    if denom.agg_mode == "group-token-mean":
        if group_ids is None or denom.group_tokens is None:
            raise ValueError("group-token-mean needs each token's group id and LossDenominator.build's group_tokens")
        ids = group_ids.tolist()
        known = [denom.group_tokens.get(g, 0.0) for g in ids]
        if any(t == 0 and m for t, m in zip(known, token_mask.tolist())):
            raise ValueError("a token in the loss belongs to a group that LossDenominator.build did not see")
        group_tokens = torch.tensor(known, dtype=token_mask.dtype, device=token_mask.device).clamp(min=1.0)
        return token_mask / (group_tokens * denom.value)
    if denom.agg_mode == "seq-mean-token-mean":
        response_length = torch.bincount(seq_index).to(token_mask.dtype)  # whole responses: never split across micro-batches
        return token_mask / (response_length[seq_index] * denom.value)
    if denom.agg_mode in ("token-mean", "constant-norm"):
        return token_mask / denom.value
    raise ValueError(f"unknown loss aggregation {denom.agg_mode!r}; valid: {', '.join(AGG_MODES)}")


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, rollout_logp: torch.Tensor | None,
                advantages: torch.Tensor, token_mask: torch.Tensor, seq_index: torch.Tensor,
                cfg: PolicyLossConfig, icepop_cfg: IcePopConfig, denom: OldDenominator, *,
                entropy: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None,
                group_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, PolicyLossStats]:
    """This micro-batch's contribution to the step's loss, and its statistics. All inputs (N,).

    rho_t = exp(logp_t - old_logp_t)                                              (Eq. 2)
    l_t   = max(-A rho_t, -A clip(rho_t, 1 - eps_low, 1 + eps_high))              (Eq. 2, clip-higher)
    l_t   = min(l_t, -A c)  where A < 0                                            (dual clip, c = 3)
    loss  = sum_t w_t [ iw_t l_t + beta k3_t - alpha H_t ]
    with w_t the aggregation weights (`aggregation_weights`; group_ids (N,) for group-token-mean), iw_t the IcePop weights, k3_t the KL estimate
    exp(r) - r - 1, r = ref_logp - logp (only when kl_coef > 0), H_t the entropy (entropy bonus).
    """
    token_mask = token_mask.to(logp.dtype)
    advantages = advantages.to(logp.dtype)
    old_logp = old_logp.to(logp.dtype)
    log_ratio = (logp - old_logp).clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)  # Eq. 2's rho
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - cfg.clip_ratio_low, 1 + cfg.clip_ratio_high)
    per_token = torch.maximum(unclipped, clipped)
    negative = advantages < 0
    if cfg.dual_clip_c:
        per_token = torch.where(negative, torch.minimum(per_token, -advantages * cfg.dual_clip_c), per_token)

    use_icepop = icepop_cfg.mode != "off"
    if use_icepop and rollout_logp is None:
        raise ValueError(f"icepop.mode={icepop_cfg.mode!r} needs the rollout engine's log-probs of every response "
                         "(TrainSample.rollout_logprobs); set icepop.mode=off to train without them")
    if use_icepop:
        gap = old_logp.detach() - rollout_logp.to(logp.dtype)
        log_k = gap.clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
        k = torch.exp(log_k)
        is_weights = icepop_weights(k, seq_index, icepop_cfg)
    else:
        is_weights = torch.ones_like(logp)
    weights = aggregation_weights(token_mask, seq_index, denom, group_ids)
    per_token = is_weights * per_token

    kl = None
    if cfg.kl_coef:
        if ref_logp is None:
            raise ValueError("loss.kl_coef > 0 needs the reference model's log-probs (PackedMicroBatch.ref_logprobs)")
        r = (ref_logp.to(logp.dtype) - logp).clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
        kl = torch.exp(r) - r - 1  # k3 estimator of KL(pi_theta || pi_ref)
        per_token = per_token + cfg.kl_coef * kl
    if cfg.entropy_coef:
        if entropy is None:
            raise ValueError("loss.entropy_coef != 0 needs the token entropies")
        per_token = per_token - cfg.entropy_coef * entropy
    loss = (weights * per_token).sum()

    with torch.no_grad():
        counted = token_mask > 0
        positive = advantages > 0
        stats = {
            "loss": loss,
            "tokens": counted.sum(),
            "sequences": torch.unique(seq_index[counted]).numel(),
            "clipped_low": (counted & negative & (ratio < 1 - cfg.clip_ratio_low)).sum(),
            "clipped_high": (counted & positive & (ratio > 1 + cfg.clip_ratio_high)).sum(),
            "clipped_dual": (counted & negative & (ratio > cfg.dual_clip_c)).sum() if cfg.dual_clip_c else 0,
            "entropy": entropy[counted].sum() if entropy is not None else 0,
            "ref_kl": kl[counted].sum() if kl is not None else 0,
        }
        if use_icepop:
            vetoed = counted & _in_vetoed_sequence(k, seq_index, icepop_cfg.veto)
            stats |= {
                "icepop_masked": (counted & (is_weights == 0)).sum(),
                "icepop_vetoed": torch.unique(seq_index[vetoed]).numel(),
                "icepop_logprob_gap": gap.abs()[counted].sum(),
                "icepop_kl": (k - 1 - log_k)[counted].sum(),
            }
        values = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=logp.device)
                              for v in stats.values()]).tolist()  # one device-to-host copy
    return loss, PolicyLossStats(**dict(zip(stats, values)))

