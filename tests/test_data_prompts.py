"""Prompt encoding (chat template, thinking flag) and the prompt-length filter."""
import os

import pytest
from transformers import AutoTokenizer

from golong.data.config import DataConfig
from golong.data.loader import load_examples
from golong.data.prompts import encode_prompts, filter_long_prompts

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="module")
def examples():
    files = [os.path.join(FIXTURES, "native.jsonl"), os.path.join(FIXTURES, "released.jsonl")]
    return load_examples(files, DataConfig()).examples


@pytest.mark.parametrize("thinking", [True, False])
def test_ids_equal_apply_chat_template(tokenizer, examples, thinking):
    prompts = encode_prompts(examples, tokenizer, DataConfig(enable_thinking=thinking))
    assert len(prompts) == len(examples)
    for example, ids in zip(examples, prompts):
        expected = tokenizer.apply_chat_template(example.messages, add_generation_prompt=True,
                                                 enable_thinking=thinking, tokenize=True)["input_ids"]
        assert ids == expected
    assert prompts.lengths.tolist() == [len(p) for p in prompts]
    text = tokenizer.decode(prompts[1])  # a CJK row survives the round trip
    assert "小明后来搬到了哪里？" in text and text.endswith("<|im_start|>assistant\n" + ("" if thinking else "<think>\n\n</think>\n\n"))


def test_length_filter_keeps_prompts_up_to_the_limit_in_order(tokenizer, examples):
    prompts = encode_prompts(examples, tokenizer, DataConfig())
    lengths = prompts.lengths.tolist()
    limit = sorted(lengths)[len(lengths) // 2]  # the median: some prompts are exactly at the limit
    kept = filter_long_prompts(examples, prompts, limit)
    expected = [i for i, n in enumerate(lengths) if n <= limit]
    assert kept.num_dropped == len(examples) - len(expected) > 0
    assert [e.id for e in kept.examples] == [examples[i].id for i in expected]
    assert [kept.prompts[k] for k in range(len(expected))] == [prompts[i] for i in expected]
    assert filter_long_prompts(examples, prompts, limit - 1).num_dropped > kept.num_dropped
    assert filter_long_prompts(examples, prompts, max(lengths)).num_dropped == 0


def test_prompt_ids_index_like_a_list(tokenizer, examples):
    prompts = encode_prompts(examples[:3], tokenizer, DataConfig())
    assert prompts[-1] == prompts[2] and list(prompts) == [prompts[0], prompts[1], prompts[2]]
    with pytest.raises(IndexError, match="out of range"):
        prompts[3]
