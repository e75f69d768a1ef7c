"""golong's call into torch's varlen FlashAttention across the API's two signatures.

The kernel itself is CUDA-only; here each signature is given by a reference function on CPU (plain SDPA per
sequence) so that what golong passes (causality, scale, grouped key/value heads) is checked exactly."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from golong.trainer.attention import _call_varlen


def _reference(q, k, v, cu, scale, causal=True):
    """(T, H, D) per sequence through SDPA; key/value heads repeated when fewer than query heads."""
    out = torch.empty_like(q)
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        o = F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1),
                                           is_causal=causal, scale=scale)
        out[a:b] = o.transpose(0, 1)
    return out


def new_api(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
            window_size=(-1, -1), enable_gqa=False):
    assert window_size == (-1, 0), "golong must ask for causal attention"
    assert enable_gqa == (query.shape[1] != key.shape[1])
    return _reference(query, key, value, cu_seq_q, scale)


def torch_2_11_api(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                   window_size=(-1, -1)):
    assert window_size == (-1, 0), "golong must ask for causal attention"
    if key.shape[1] != query.shape[1]:
        raise RuntimeError("this API has no grouped-query attention")  # TypeError on enable_gqa, seen on an H200
    return _reference(query, key, value, cu_seq_q, scale)


def old_api(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    assert is_causal, "golong must ask for causal attention"
    if key.shape[1] != query.shape[1]:
        raise RuntimeError("this API has no grouped-query attention")
    return _reference(query, key, value, cu_seq_q, None)  # fixed 1/sqrt(D)


def old_api_with_scale(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None,
                       scale=None):
    assert is_causal
    if key.shape[1] != query.shape[1]:
        raise RuntimeError("this API has no grouped-query attention")
    return _reference(query, key, value, cu_seq_q, scale)


@pytest.mark.parametrize("api", [new_api, torch_2_11_api, old_api, old_api_with_scale])
@pytest.mark.parametrize("scale", [None, 0.125 ** 0.5 / 2, 16 ** -0.5])
def test_every_signature_gives_the_same_causal_gqa_attention(api, scale):
    torch.manual_seed(0)
    T, Hq, Hkv, D = 23, 4, 2, 16
    q, k, v = torch.randn(T, Hq, D, dtype=torch.float64), torch.randn(T, Hkv, D, dtype=torch.float64), \
        torch.randn(T, Hkv, D, dtype=torch.float64)
    cu = torch.tensor([0, 5, 6, 17, 23], dtype=torch.int32)
    expected = _reference(q, k, v, cu, scale)
    got = _call_varlen(api, q, k, v, cu, cu, 11, 11, scale)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
