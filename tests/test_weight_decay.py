"""trainer.weight_decay_norms_and_biases: AdamW groups that exempt norm weights and biases (Megatron's rule)."""
from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

from golong.config import ConfigError, load_config
from golong.trainer.engine import adamw_param_groups, is_norm_or_bias

DIST = os.path.join(os.path.dirname(__file__), "dist")
NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight", "q_norm.weight", "k_norm.weight", "model.norm.weight")


def decay_of(groups: list[dict]) -> dict[int, float]:
    """id(parameter) -> the weight decay of its group (each parameter in exactly one group)."""
    out = {}
    for group in groups:
        for p in group["params"]:
            assert id(p) not in out, "a parameter in two groups"
            out[id(p)] = group["weight_decay"]
    return out


def test_norm_weights_and_biases_get_no_decay_on_the_tiny_model(tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    decay = decay_of(adamw_param_groups(model, 0.1, decay_norms_and_biases=False))
    named = dict(model.named_parameters())
    assert set(decay) == {id(p) for p in named.values()}  # every trainable parameter, once
    for name, p in named.items():
        expected = 0.0 if name.endswith(NORMS) else 0.1
        assert decay[id(p)] == expected, name
    assert sum(1 for n in named if n.endswith(NORMS)) == 4 * 2 + 1  # 4 norms per layer x 2 layers + final norm
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.1.mlp.down_proj.weight"):
        assert decay[id(named[name])] == 0.1


def test_biases_are_exempt_and_the_choice_true_decays_everything():
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                         attention_bias=True))
    named = dict(model.named_parameters())
    biases = [n for n in named if n.endswith(".bias")]
    assert len(biases) == 4  # q, k, v, o projections
    decay = decay_of(adamw_param_groups(model, 0.05, decay_norms_and_biases=False))
    assert all(decay[id(named[n])] == 0.0 for n in biases)
    assert decay[id(named["model.layers.0.self_attn.o_proj.weight"])] == 0.05
    everything = adamw_param_groups(model, 0.05, decay_norms_and_biases=True)
    assert len(everything) == 1 and set(decay_of(everything).values()) == {0.05}


def test_a_zero3_shard_is_classified_by_its_full_shape():
    shard = torch.nn.Parameter(torch.zeros(0))  # what ZeRO-3 leaves in param.data: an empty flat tensor
    shard.ds_shape = torch.Size([128, 64])
    assert not is_norm_or_bias("model.layers.0.mlp.up_proj.weight", shard)
    shard.ds_shape = torch.Size([64])
    assert is_norm_or_bias("model.layers.0.input_layernorm.weight", shard)


def test_a_raw_deepspeed_optimizer_is_refused_unless_norms_are_decayed_too():
    base = ["model.path=m", "trainer.deepspeed={optimizer: {type: AdamW, params: {lr: 1.0e-6}}}"]
    with pytest.raises(ConfigError, match=r"trainer\.deepspeed\.optimizer: .*Fix: remove trainer\.deepspeed\.optimizer"):
        load_config(None, base)
    assert load_config(None, base + ["trainer.weight_decay_norms_and_biases=true"]).trainer.deepspeed
    assert load_config(None, base + ["trainer.weight_decay=0"]).trainer.weight_decay == 0.0


@pytest.mark.slow
def test_zero3_engine_decays_matrices_and_leaves_norms(tiny_model_path, tmp_path):
    from test_engine import run_python

    out = tmp_path / "wd.pt"
    run_python(os.path.join(DIST, "engine_weight_decay.py"), [tiny_model_path, str(out)], timeout=600)
    d = torch.load(out, weights_only=True)
    factor = 1 - d["lr"] * d["weight_decay"]  # AdamW with zero gradients: p <- p * (1 - lr * wd), nothing else
    for name, before in d["before"].items():
        after = d["after"][name]
        if name.endswith(NORMS):
            assert torch.equal(after, before), name
        else:
            torch.testing.assert_close(after, before * factor, rtol=1e-6, atol=1e-9, msg=name)
            assert not torch.equal(after, before), name
