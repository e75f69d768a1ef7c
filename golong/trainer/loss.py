"""The GoLongRL policy loss: clipped surrogate (Eq. 2) with clip-higher and dual clip, IcePop
rollout/trainer mismatch correction (section 5.1, Table 12), and step-wide aggregation (Eq. 3, 4, DAPO).

One formula per function, each pure (tensors in, tensors out: no collective, no device-host sync):
`log_ratio`, `clipped_surrogate` (Eq. 2), `icepop_weights` (section 5.1), `k3_kl`, `aggregation_weights`
(Eq. 3, 4, DAPO); `policy_loss` composes them into a micro-batch's contribution, and `loss_stats` measures
it (one device-to-host copy). The collectives are the callers': `LossDenominator.build` and
`PolicyLossStats.all_reduce` take the world.

Split invariance. The step's loss is one sum over every response token of the step divided by one
step-wide denominator (`LossDenominator`, computed once per step over all micro-batches and all
data-parallel ranks). Each micro-batch contributes its share `sum_t w_t * l_t`, where the weight
`w_t` uses only that denominator and quantities of the token's own response (a response never spans
micro-batches) or of its prompt group (whose token count the denominator holds, since a group may span
micro-batches, prompt-once units and ranks). The gradients of the contributions therefore add up to the gradient of the step's
loss however the batch is split; the engine undoes DeepSpeed's averaging over ranks (see engine.py).

    denom = LossDenominator.build(units_of_this_rank, "group-token-mean", world=world)  # collective, once a step
    group_index = denom.group_index(mb.group_ids, mb.loss_mask)       # on the host copy (None unless group-token-mean)
    tokens = LossInputs(logp=logp, old_logp=..., advantages=..., token_mask=..., seq_index=..., group_index=...)
    loss = policy_loss(tokens, cfg, icepop, denom.to(device))
    stats = loss_stats(tokens, loss, cfg, icepop)                     # summed over a step, then .all_reduce(world)
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from golong.trainer.batch import Group
from golong.trainer.config import IcePopConfig, PolicyLossConfig
from golong.world import World

AGG_MODES = ("group-token-mean", "token-mean", "seq-mean-token-mean", "constant-norm")
_LOG_RATIO_LIMIT = 20.0  # exp(+-20) bounds ratios of log-probs that disagree wildly (as verl does)


def resolve_agg_mode(cfg: PolicyLossConfig, preferred: str | None = None) -> str:
    """The aggregation mode to use: the configured one, or for "auto" the advantage estimator's
    preference (Dr.GRPO prefers constant-norm), else token-mean (DAPO's whole-step token mean)."""
    mode = cfg.agg_mode if cfg.agg_mode != "auto" else (preferred or "token-mean")
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation {mode!r}; valid: {', '.join(AGG_MODES)}")
    return mode


@dataclass(frozen=True, eq=False)
class LossDenominator:
    """The step-wide normaliser of the loss; build it once per step, before the first micro-batch.

    group-token-mean (Eq. 4): prompt groups of the step; `group_tokens` holds each group's response
    tokens (over all its G responses, wherever they are packed), so a token weighs
    1 / (groups x its group's tokens).  token-mean (DAPO): response tokens of the step.
    seq-mean-token-mean: responses of the step (each response's tokens are first averaged over its own
    length).  constant-norm (Dr.GRPO, Eq. 3): responses x L.  Responses with loss_weight 0 count in none
    of them (a group all of whose responses have weight 0 is not counted). Tokens that IcePop masks or
    vetoes still count (they contribute 0), as in IcePop's own objective, so the denominator is known
    before any log-prob is computed.

    The group table is the one owner of the map from Group.group_id to a dense group index:
    `group_index` applies it to a micro-batch's tokens, `aggregation_weights` indexes `group_tokens` with it.
    """

    agg_mode: str
    value: float
    group_ids: torch.Tensor | None = None  # (G,) int64 group-token-mean: the step's group_ids in the loss, sorted; index g is group_ids[g] (host)
    group_tokens: torch.Tensor | None = None  # (G,) float64 group-token-mean: response tokens (in the loss) of group index g

    @classmethod
    def build(cls, units: list[Group], agg_mode: str, constant_norm_length: int = 0, *,
              world: World) -> LossDenominator:
        """From this rank's units, summed over `world`'s ranks (a collective: every rank calls it).
        A group split over micro-batches, units or ranks counts once."""
        if agg_mode not in AGG_MODES:
            raise ValueError(f"unknown loss aggregation {agg_mode!r}; valid: {', '.join(AGG_MODES)} "
                             "(resolve 'auto' with resolve_agg_mode first)")
        if agg_mode == "constant-norm" and constant_norm_length < 1:
            raise ValueError("constant-norm needs constant_norm_length >= 1 (Dr.GRPO's L, e.g. the max response length)")
        counted = [(u.group_id, int(n)) for u in units for n in u.response_lengths[u.in_loss]]  # (group, tokens)
        if agg_mode == "group-token-mean":
            return cls._group_token_mean(counted, world)
        tokens, sequences = world.all_reduce_sum([sum(n for _, n in counted), len(counted)])
        value = {"token-mean": tokens, "seq-mean-token-mean": sequences,
                 "constant-norm": sequences * constant_norm_length}[agg_mode]
        return cls(agg_mode, max(value, 1.0))  # a step with nothing to learn from gives loss 0, not 0/0

    @classmethod
    def _group_token_mean(cls, counted: list[tuple[int, int]], world: World) -> LossDenominator:
        if any(group < 0 for group, _ in counted):
            raise ValueError("algorithm.loss.agg_mode=group-token-mean needs every Group's group_id "
                             "(which prompt group it belongs to)")
        local: dict[int, float] = {}
        for group, tokens in counted:
            local[group] = local.get(group, 0.0) + tokens
        group_tokens: dict[int, float] = {}
        for part in world.all_gather_objects(local):
            for group, tokens in part.items():
                group_tokens[group] = group_tokens.get(group, 0.0) + tokens
        ids = sorted(group_tokens)
        return cls("group-token-mean", max(float(len(ids)), 1.0), group_ids=torch.tensor(ids, dtype=torch.long),
                   group_tokens=torch.tensor([group_tokens[g] for g in ids], dtype=torch.float64))

    def group_index(self, group_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor | None:
        """(N,) int64: each token's dense group index into `group_tokens`, from its group id (`group_ids`:
        PackedMicroBatch.group_ids); None unless group-token-mean. Tokens out of the loss whose group is not
        counted get index 0 (their weight is 0). Call it on the micro-batch's host copy: the check that every
        token in the loss belongs to a counted group reads the result, which on a device would wait for it."""
        if self.agg_mode != "group-token-mean":
            return None
        known_ids = self.group_ids.to(group_ids.device)
        if not known_ids.numel():
            index, known = torch.zeros_like(group_ids), torch.zeros_like(group_ids, dtype=torch.bool)
        else:
            index = torch.searchsorted(known_ids, group_ids).clamp(max=known_ids.numel() - 1)
            known = known_ids[index] == group_ids
        if bool(((token_mask != 0) & ~known).any()):
            raise ValueError("a token in the loss belongs to a group that LossDenominator.build did not see")
        return torch.where(known, index, 0)

    def to(self, device: torch.device) -> LossDenominator:
        """This denominator with `group_tokens` on `device`, where the loss indexes it (the same object
        when there is nothing to move). Move it with the micro-batch, before the forward pass."""
        if self.group_tokens is None or self.group_tokens.device == torch.device(device):
            return self
        return replace(self, group_tokens=self.group_tokens.to(device))


@dataclass
class PolicyLossStats:
    """Sums over the loss tokens (loss_mask > 0) of some micro-batches. Add the stats of a step's
    micro-batches with `+`, sum them over ranks with `all_reduce(world)`, then read `metrics()`."""

    loss: float = 0.0  # the contributions themselves: their total is the step's loss
    tokens: float = 0.0
    sequences: float = 0.0
    clipped_low: float = 0.0  # tokens with A < 0 and rho < 1 - clip_ratio_low
    clipped_high: float = 0.0  # tokens with A > 0 and rho > 1 + clip_ratio_high
    clipped_dual: float = 0.0  # tokens with A < 0 and rho > dual_clip_c
    entropy: float = 0.0
    ref_kl: float = 0.0  # k3 estimate of KL(policy || reference), when a reference is used
    icepop_masked: float = 0.0  # tokens whose IcePop weight is 0 (out of range in mask mode, or vetoed)
    icepop_vetoed: float = 0.0  # sequences dropped by the veto
    icepop_logprob_gap: float = 0.0  # sum of |old logp - rollout logp|
    icepop_kl: float = 0.0  # k3 estimate of KL(rollout || trainer): sum of (k - 1 - log k), k = pi_old / pi_rollout

    def __add__(self, other: PolicyLossStats) -> PolicyLossStats:
        return PolicyLossStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def all_reduce(self, world: World) -> PolicyLossStats:
        """The sums over `world`'s ranks (a collective: every rank calls it)."""
        names = [f.name for f in fields(self)]
        totals = world.all_reduce_sum([getattr(self, name) for name in names])
        return PolicyLossStats(**dict(zip(names, totals)))

    def metrics(self) -> dict[str, float]:
        per_token = max(self.tokens, 1.0)
        return {
            "loss": self.loss,
            "clip_frac_low": self.clipped_low / per_token,
            "clip_frac_high": self.clipped_high / per_token,
            "clip_frac_dual": self.clipped_dual / per_token,
            "entropy": self.entropy / per_token,
            "ref_kl": self.ref_kl / per_token,
            "icepop_masked_frac": self.icepop_masked / per_token,
            "icepop_vetoed_seqs": self.icepop_vetoed,
            "icepop_logprob_gap": self.icepop_logprob_gap / per_token,
            "icepop_kl": self.icepop_kl / per_token,
            "response_tokens": self.tokens,
            "responses": self.sequences,
        }


@dataclass
class LossInputs:
    """One micro-batch's response tokens as the loss reads them; every tensor (N,), on one device.
    The float tensors other than `entropy` are cast to logp's dtype."""

    logp: torch.Tensor  # log-probs under the trained policy (with gradient)
    old_logp: torch.Tensor  # under the policy that sampled (PackedMicroBatch.old_logprobs; no gradient)
    advantages: torch.Tensor  # each token's response advantage
    token_mask: torch.Tensor  # the response's loss_weight (0: out of the loss)
    seq_index: torch.Tensor  # int64: the token's response; a response's tokens are contiguous (as packed)
    rollout_logp: torch.Tensor | None = None  # the rollout engine's log-probs (IcePop)
    entropy: torch.Tensor | None = None  # token entropies (entropy bonus, statistics)
    ref_logp: torch.Tensor | None = None  # the reference model's log-probs (kl_coef > 0)
    group_index: torch.Tensor | None = None  # int64 group-token-mean: LossDenominator.group_index

    def __post_init__(self):
        dtype = self.logp.dtype
        self.old_logp, self.advantages, self.token_mask = (
            t.to(dtype) for t in (self.old_logp, self.advantages, self.token_mask))
        self.rollout_logp, self.ref_logp = (None if t is None else t.to(dtype) for t in (self.rollout_logp, self.ref_logp))


def log_ratio(logp: torch.Tensor, base_logp: torch.Tensor) -> torch.Tensor:
    """(N,) log(p / p_base) per token, clamped to +-20 (the ratios Eq. 2, IcePop and k3 exponentiate)."""
    return (logp - base_logp).clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, cfg: PolicyLossConfig) -> torch.Tensor:
    """(N,) per-token loss l_t of the ratio rho_t = pi_theta(y_t) / pi_old(y_t) and the advantage A.

    l_t = max(-A rho_t, -A clip(rho_t, 1 - eps_low, 1 + eps_high))    (Eq. 2; clip-higher: eps_high > eps_low)
    l_t = min(l_t, -A c)  where A < 0                                  (dual clip, c = dual_clip_c; 0: off)
    """
    unclipped = -advantages * ratio  # Eq. 2
    clipped = -advantages * ratio.clamp(1 - cfg.clip_ratio_low, 1 + cfg.clip_ratio_high)  # Eq. 2, clip-higher
    per_token = torch.maximum(unclipped, clipped)
    if cfg.dual_clip_c:  # dual clip: a negative advantage's loss is at most c |A|
        per_token = torch.where(advantages < 0, torch.minimum(per_token, -advantages * cfg.dual_clip_c), per_token)
    return per_token


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


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(N,) k3 estimate of KL(pi_theta || pi_ref) per token: exp(r) - r - 1, r = log pi_ref / pi_theta
    (Schulman's k3; unbiased, never negative)."""
    r = log_ratio(ref_logp, logp)
    return torch.exp(r) - r - 1


def aggregation_weights(token_mask: torch.Tensor, seq_index: torch.Tensor, denom: LossDenominator,
                        group_index: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) w_t such that the step's loss is sum_t w_t * l_t over all micro-batches and ranks.

    group-token-mean (Eq. 4):  w_t = m_t / (P * sum_{j in g} |o_j|)   g: the token's prompt group
    token-mean (DAPO):         w_t = m_t / sum_i |o_i|
    seq-mean-token-mean:       w_t = m_t / (|o_i| * N)
    constant-norm (Eq. 3):     w_t = m_t / (N * L)
    m_t is the token's loss mask (its response's loss_weight); |o_i| the length of its response; the
    sums run over the responses in the loss of the whole step; P is the number of prompt groups.
    group_index (N,): the token's group in `denom.group_tokens` (LossDenominator.group_index), on its device.
    """
    if denom.agg_mode == "group-token-mean":
        if group_index is None or denom.group_tokens is None:
            raise ValueError("group-token-mean needs each token's group index (LossDenominator.group_index) "
                             "and LossDenominator.build's group_tokens")
        if not denom.group_tokens.numel():  # no group in the step's loss, so no token (group_index checked)
            return torch.zeros_like(token_mask)
        group_tokens = denom.group_tokens.to(token_mask.dtype)[group_index]  # Eq. 4: sum_{j in g} |o_j|
        return token_mask / (group_tokens * denom.value)
    if denom.agg_mode == "seq-mean-token-mean":
        lengths, runs = _per_response(torch.ones_like(seq_index), seq_index)  # whole responses: never split
        return token_mask / (lengths.to(token_mask.dtype)[runs] * denom.value)
    if denom.agg_mode in ("token-mean", "constant-norm"):  # DAPO; Eq. 3
        return token_mask / denom.value
    raise ValueError(f"unknown loss aggregation {denom.agg_mode!r}; valid: {', '.join(AGG_MODES)}")


def policy_loss(tokens: LossInputs, cfg: PolicyLossConfig, icepop_cfg: IcePopConfig,
                denom: LossDenominator) -> torch.Tensor:
    """This micro-batch's contribution to the step's loss (a 0-dim tensor with gradient):

    loss = sum_t w_t [ iw_t l_t + beta k3_t - alpha H_t ]
    l_t the clipped surrogate of rho_t = exp(logp_t - old_logp_t) (`clipped_surrogate`, Eq. 2), iw_t the
    IcePop weights of k_t = exp(old_logp_t - rollout_logp_t) (`icepop_weights`), k3_t the KL estimate to the
    reference (`k3_kl`, only when beta = kl_coef > 0), H_t the entropy (bonus alpha = entropy_coef) and w_t
    the aggregation weights (`aggregation_weights`, Eq. 3, 4, DAPO).
    """
    if icepop_cfg.mode != "off" and tokens.rollout_logp is None:
        raise ValueError(f"icepop.mode={icepop_cfg.mode!r} needs the rollout engine's log-probs of every response "
                         "(Group.rollout_logprobs); set icepop.mode=off to train without them")
    if cfg.kl_coef and tokens.ref_logp is None:
        raise ValueError("loss.kl_coef > 0 needs the reference model's log-probs (PackedMicroBatch.ref_logprobs)")
    if cfg.entropy_coef and tokens.entropy is None:
        raise ValueError("loss.entropy_coef != 0 needs the token entropies")
    ratio = torch.exp(log_ratio(tokens.logp, tokens.old_logp))  # Eq. 2's rho
    per_token = clipped_surrogate(ratio, tokens.advantages, cfg)
    if icepop_cfg.mode != "off":  # section 5.1
        k = torch.exp(log_ratio(tokens.old_logp.detach(), tokens.rollout_logp))
        per_token = icepop_weights(k, tokens.seq_index, icepop_cfg) * per_token
    if cfg.kl_coef:
        per_token = per_token + cfg.kl_coef * k3_kl(tokens.logp, tokens.ref_logp)
    if cfg.entropy_coef:
        per_token = per_token - cfg.entropy_coef * tokens.entropy
    weights = aggregation_weights(tokens.token_mask, tokens.seq_index, denom, tokens.group_index)
    return (weights * per_token).sum()


@torch.no_grad()
def loss_stats(tokens: LossInputs, loss: torch.Tensor, cfg: PolicyLossConfig, icepop_cfg: IcePopConfig) -> PolicyLossStats:
    """The statistics of one micro-batch whose contribution `policy_loss` gave as `loss`: sums over its
    loss tokens, computed on their device and read with one device-to-host copy."""
    counted = tokens.token_mask > 0
    ratio = torch.exp(log_ratio(tokens.logp, tokens.old_logp))
    negative = tokens.advantages < 0
    zero = torch.zeros((), dtype=torch.float64, device=tokens.logp.device)

    def total(values: torch.Tensor) -> torch.Tensor:
        return torch.where(counted, values, 0).sum()

    sums = {
        "loss": loss.detach(),
        "tokens": counted.sum(),
        "sequences": _responses_with(counted, tokens.seq_index),
        "clipped_low": (counted & negative & (ratio < 1 - cfg.clip_ratio_low)).sum(),
        "clipped_high": (counted & (tokens.advantages > 0) & (ratio > 1 + cfg.clip_ratio_high)).sum(),
        "clipped_dual": (counted & negative & (ratio > cfg.dual_clip_c)).sum() if cfg.dual_clip_c else zero,
        "entropy": total(tokens.entropy) if tokens.entropy is not None else zero,
        "ref_kl": total(k3_kl(tokens.logp, tokens.ref_logp)) if cfg.kl_coef else zero,
    }
    if icepop_cfg.mode != "off":
        log_k = log_ratio(tokens.old_logp, tokens.rollout_logp)
        k = torch.exp(log_k)
        vetoed = counted & _in_vetoed_sequence(k, tokens.seq_index, icepop_cfg.veto)
        sums |= {
            "icepop_masked": (counted & (icepop_weights(k, tokens.seq_index, icepop_cfg) == 0)).sum(),
            "icepop_vetoed": _responses_with(vetoed, tokens.seq_index),
            "icepop_logprob_gap": total((tokens.old_logp - tokens.rollout_logp).abs()),
            "icepop_kl": total(k - 1 - log_k),
        }
    values = torch.stack([v.to(torch.float64) for v in sums.values()]).tolist()  # the one device-to-host copy
    return PolicyLossStats(**dict(zip(sums, values)))


# Per-response reductions. A response's tokens are contiguous (packing lays them out so), so numbering
# the runs of equal seq_index 0, 1, ... gives each response a slot in an (N,) buffer: no need to read
# seq_index.max() (or torch.unique / bincount, which do) from the device.


def _per_response(values: torch.Tensor, seq_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """((N,) the sum of `values` over each response, by run number; (N,) each token's run number)."""
    starts = torch.ones_like(seq_index, dtype=torch.bool)
    starts[1:] = seq_index[1:] != seq_index[:-1]
    runs = starts.cumsum(0) - 1
    return torch.zeros_like(values).index_add_(0, runs, values), runs


def _in_vetoed_sequence(k: torch.Tensor, seq_index: torch.Tensor, veto: float) -> torch.Tensor:
    """(N,) whether the token's sequence has any token ratio below `veto` (0 turns the veto off)."""
    if veto <= 0:
        return torch.zeros_like(k, dtype=torch.bool)
    below, runs = _per_response((k < veto).long(), seq_index)
    return (below > 0)[runs]


def _responses_with(flags: torch.Tensor, seq_index: torch.Tensor) -> torch.Tensor:
    """0-dim: how many responses have a flagged token."""
    return (_per_response(flags.long(), seq_index)[0] > 0).sum()
