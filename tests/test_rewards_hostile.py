"""Hostile model outputs: every reward type returns a float in [0, 1], in bounded time, on all of them."""
from __future__ import annotations

import random
import time

import pytest

from golong.rewards import REWARD_TYPES, compute_score

CALL_LIMIT_S = 10.0  # generous on a loaded 2-core machine; a hang or a quadratic blow-up exceeds it

GOLDS = [
    ("em", "Paris"),
    ("accuracy", "C"),
    ("accuracy", ["the blue folder"]),
    ("f1", ["Part 1", "Part 2"]),
    ("f1", "the cat sat on the mat"),
    ("math_verify", "\\frac{1}{2}"),
    ("math_verify", "5.5%\nNo Error"),
    ("iou", '{"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]}'),
    ("subem", ["Cluster_A 25.00%", "support"]),
    ("ndcg", ["A", "B", "C"]),
    ("pairwise", ["A", "B", "C"]),
    ("rouge_l", "the cat sat on the mat"),
    ("rouge_l", ["猫坐在垫子上", "a cat on a mat"]),
    ("retrieval_calculate", {"doc_ids": ["<|doc_1|>"], "golden_label": "3"}),
]


def hostile_outputs() -> dict[str, object]:
    rng = random.Random(0)
    two_mb = "".join(rng.choices("abcdefghij klmnop\n0123456789{}[]()\\^_$%.,:;'\"<>/|", k=2_000_000))
    cjk = "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(300_000))  # ~0.9 MB of UTF-8
    raw = bytes(rng.randrange(256) for _ in range(200_000))
    tower = "9^{" * 60 + "9" + "}" * 60
    return {
        "empty": "",
        "whitespace": " \n\t\r\n\u3000 ",
        "huge list": "Part 1\nA\n" * 150_000,
        "2 MB random": two_mb,
        "2 MB one line": "x" * 2_000_000,
        "newlines": "\n" * 1_000_000,
        "binary bytes": raw,  # a bytes object, not text
        "binary as text": raw.decode("latin-1") + "\x00\udcff\ud800",  # NULs, control chars, lone surrogates
        "nested latex": "[Answer]\n\\boxed{" + "\\frac{1}{" * 2000 + "2" + "}" * 2000 + "}",
        "unbalanced latex": "[Answer]\n" + "\\frac{\\sqrt{" * 20_000,
        "exponent tower": f"[Answer]\n\\boxed{{{tower}}}",
        "plain tower": "[Answer]\n" + "^".join(["99"] * 40),
        "huge factorial": "[Answer]\n\\boxed{(10^{10^{10}})!}",
        "huge integer": "[Answer]\n" + "7" * 100_000,
        "malformed json": '<answer>{"columns": ["a", "b"], "data": [[1, "x"], [2</answer>',
        "deep json": "<answer>" + "[" * 200_000 + "]" * 200_000 + "</answer>",
        "huge json": '<answer>{"columns": ["a", "b"], "data": [' + ",".join(['[1, "x"]'] * 200_000) + "]}</answer>",
        "json big numbers": '<answer>{"columns": ["a"], "data": [[' + "9" * 5000 + "], [1e999999], [NaN]]}</answer>",
        "cjk": "[答案]\n" + cjk,
        "repeated tags": "<think>" * 20_000 + "</think>" * 20_000 + "[Answer]" * 20_000 + "<answer>" * 20_000,
        "repeated composite tags": "<relevant_doc_ids><|doc_1|>" * 20_000 + "<continue_reasoning>" * 20_000,
        "repeated phrase": "The correct answer is (A). " * 20_000,
    }


@pytest.fixture(scope="module")
def outputs():
    return hostile_outputs()


@pytest.mark.parametrize("reward_type, gold", GOLDS, ids=[f"{r}-{i}" for i, (r, _) in enumerate(GOLDS)])
def test_hostile_outputs(outputs, reward_type, gold):
    slowest = (0.0, "")
    for name, response in outputs.items():
        start = time.perf_counter()
        score = compute_score(reward_type, response, gold)
        elapsed = time.perf_counter() - start
        assert isinstance(score, float) and 0.0 <= score <= 1.0, (name, score)
        slowest = max(slowest, (elapsed, name))
    assert slowest[0] < CALL_LIMIT_S, f"{reward_type} took {slowest[0]:.1f} s on {slowest[1]!r}"


def test_every_reward_type_is_covered():
    assert set(REWARD_TYPES) | {"retrieval_calculate"} == {r for r, _ in GOLDS}


def test_model_output_is_never_executed(tmp_path):
    marker = tmp_path / "executed"
    code = f"__import__('os').system('touch {marker}')"
    answers = [f"[Answer]\n{code}", f"[Answer]\n\\boxed{{{code}}}", f"[Answer] ${code}$ = {code}",
               f'<answer>{{"columns": ["{code}"], "data": [["{code}"]]}}</answer>',
               f"<relevant_doc_ids><|doc_1|></relevant_doc_ids><continue_reasoning>{code}</continue_reasoning>"]
    for reward_type, gold in GOLDS:
        for answer in answers:
            assert compute_score(reward_type, answer, gold) == 0.0
    assert not marker.exists()
