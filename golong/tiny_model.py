"""A tiny Qwen3-architecture causal LM and a locally trained tokenizer, for tests and the CPU demo.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on local text in about a second
(byte-level, so any text, CJK included, encodes without unknown tokens), and the model is randomly
initialised. The folder it writes loads in both transformers and vLLM. head_dim is 64 because vLLM's
CPU attention kernels reject smaller heads.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Reasoning markers are added tokens but not special ones, as in Qwen3: decoding with
# skip_special_tokens keeps them, so the rewards can see where the reasoning ends.
THINK_TOKENS = ["<think>", "</think>"]

# A Qwen-style chat template; `enable_thinking=False` closes an empty reasoning block in the prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

_DEFAULT_CORPUS = [
    "The quick brown fox jumps over the lazy dog. [Answer] The correct answer is (A).",
    "Read the context and answer the question. Output the [Answer] identifier first.",
    "red green blue yellow black white orange purple north south east west",
    "alpha beta gamma delta one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9",
    "长上下文 强化学习 答案 问题 文档 [答案]",
    '{"columns": ["name", "value"], "data": [["a", 1]]} <answer> </answer>',
]


@dataclass
class TinyModelSpec:
    """Shape of the tiny model; the defaults give ~1M parameters that train in seconds on CPU."""

    vocab_size: int = 1024  # BPE target size (the model's embedding is padded to a multiple of 64)
    byte_level: bool = True  # False: characters of the corpus only (unknown ones -> <unk>), for tiny vocabularies
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    head_dim: int = 64
    intermediate_size: int = 256
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = False
    seed: int = 0


def train_tokenizer(corpus: Iterable[str], vocab_size: int, byte_level: bool = True):
    """A BPE `PreTrainedTokenizerFast` with Qwen's special tokens and chat template.

    byte_level=True encodes any text (256 byte tokens, then merges). byte_level=False starts from the
    corpus's characters only (SentencePiece-style spaces, newlines and punctuation split off): a vocabulary
    of a few hundred tokens that
    are mostly whole words, so that a random-init policy already emits words of the corpus (the
    CPU demo relies on it); characters outside the corpus become <unk>.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if byte_level:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet, specials = pre_tokenizers.ByteLevel.alphabet(), SPECIAL_TOKENS
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        # A newline is a token of its own, so a word starts the same way on a new line as at the start
        # of the text ("[Answer]\nred\nblue" -> "▁[", "Answer", "]", "\n", "red", "\n", "blue"); only the
        # text's first word gets the "▁" prefix, so decoding gives the text back exactly. Punctuation is
        # split off too, so "blue." is "▁blue" "." and a word is one token wherever it is.
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.Metaspace(prepend_scheme="first"),
            pre_tokenizers.Punctuation(behavior="isolated")])
        tok.decoder = decoders.Metaspace(prepend_scheme="first")
        alphabet, specials = [], SPECIAL_TOKENS + ["<unk>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(out_dir: str, corpus: Iterable[str] | None = None, spec: TinyModelSpec | None = None) -> str:
    """Write a tiny Qwen3 model + tokenizer to `out_dir` (idempotent) and return the folder."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    spec = spec or TinyModelSpec()
    return _write_tiny(out_dir, corpus, spec, Qwen3Config, Qwen3ForCausalLM, intermediate_size=spec.intermediate_size)


def _write_tiny(out_dir: str, corpus: Iterable[str] | None, spec: TinyModelSpec, config_cls, model_cls,
                **architecture) -> str:
    """Train the tokenizer, build `model_cls(config_cls(spec's shape, **architecture))` and save both."""
    import torch
    from transformers import GenerationConfig

    marker = os.path.join(out_dir, "golong_tiny.json")
    if os.path.exists(marker):
        return out_dir
    os.makedirs(out_dir, exist_ok=True)
    tokenizer = train_tokenizer(corpus if corpus is not None else _DEFAULT_CORPUS, spec.vocab_size, spec.byte_level)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = config_cls(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
        torch_dtype="float32",
        **architecture,
    )
    torch.manual_seed(spec.seed)
    model = model_cls(config)
    model.generation_config = GenerationConfig(eos_token_id=[eos, pad], pad_token_id=pad)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    with open(marker, "w") as f:  # written last: a folder without it is incomplete and rebuilt
        json.dump(spec.__dict__, f)
    return out_dir


@dataclass
class TinyMoeSpec(TinyModelSpec):
    """Shape of the tiny Qwen3-MoE (Qwen3-30B-A3B's architecture, scaled down): every layer is a
    sparse MoE block of `num_experts` experts, `top_k` per token, renormalised top-k weights."""

    num_experts: int = 8
    top_k: int = 2
    moe_intermediate_size: int = 64
    norm_topk_prob: bool = True  # as Qwen3-30B-A3B


def build_tiny_moe_model(out_dir: str, corpus: Iterable[str] | None = None, spec: TinyMoeSpec | None = None) -> str:
    """Write a tiny Qwen3-MoE model + tokenizer to `out_dir` (idempotent) and return the folder.

    It loads in transformers (Qwen3MoeForCausalLM) and in vLLM (bfloat16, also on CPU).
    """
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    spec = spec or TinyMoeSpec()
    return _write_tiny(out_dir, corpus, spec, Qwen3MoeConfig, Qwen3MoeForCausalLM,
                       intermediate_size=spec.intermediate_size,  # unused: no dense MLP layers
                       moe_intermediate_size=spec.moe_intermediate_size,
                       num_experts=spec.num_experts,
                       num_experts_per_tok=spec.top_k,
                       norm_topk_prob=spec.norm_topk_prob,
                       decoder_sparse_step=1,
                       mlp_only_layers=[])
