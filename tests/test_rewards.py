"""Worked values for every rule of the rewards: extraction, the nine rewards, anti-gaming, routing."""
from __future__ import annotations

import math
import random

import pytest
from rouge_score import rouge_scorer

from golong.configlib import ConfigError, load
from golong.rewards import (
    REWARD_TO_TASK,
    RewardConfig,
    REWARD_TYPES,
    TASK_TO_REWARD,
    compute_score,
    register,
    registered_types,
    route_released,
    validate_reward_type,
)
from golong.rewards.extract import answer_area, normalize, normalized_lines, tokens
from golong.rewards.rouge import lcs_length

# ----------------------------------------------------------------------------------------------
# Rule 1: the reasoning block


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>it is Paris</think>\n[Answer]\nParis", 1.0),
        ("<think>[Answer] Paris</think>[Answer] Lyon", 0.0),  # only the text after </think> counts
        ("<think>[Answer] Paris</think>", 0.0),  # an answer inside the reasoning earns nothing
        ("<think>hmm [Answer] Paris", 0.0),  # opened, never closed: unfinished
        ("<think>a</think>[Answer] Paris<think>more", 0.0),  # reopened after the last close
        ("<think>a</think>x</think>[Answer] Paris", 1.0),  # the last </think> counts
        ("plan...</think>[Answer] Paris", 1.0),  # template-opened <think>: only the close appears
        ("[Answer] Paris", 1.0),  # no reasoning at all
    ],
)
def test_reasoning_block(response, expected):
    assert compute_score("em", response, "Paris") == expected


def test_require_think_close():
    assert compute_score("em", "[Answer] Paris", "Paris", require_think_close=True) == 0.0
    assert compute_score("em", "plan</think>[Answer] Paris", "Paris", require_think_close=True) == 1.0
    assert compute_score("em", "<think>plan</think>[Answer] Paris", "Paris", require_think_close=True) == 1.0


# ----------------------------------------------------------------------------------------------
# Rules 2 and 3: answer area and normalization


@pytest.mark.parametrize(
    "response, area",
    [
        ("reasoning\n[Answer]\nParis", "\nParis"),
        ("[Answer] Lyon\n[Answer] Paris", "Paris"),  # the last marker
        ("推理\n[答案]\n巴黎", "\n巴黎"),
        ("［答案］巴黎", "巴黎"),  # full-width brackets
        ("**[Answer]**: Paris", " Paris"),  # bold and colon belong to the marker
        ("[answer] Paris", "Paris"),
        ("no marker at all", "no marker at all"),
    ],
)
def test_answer_area(response, area):
    assert answer_area(response) == area


def test_normalization():
    assert normalize("  ＰＡＲＩＳ\t is\n\n  Nice ") == "paris is nice"  # NFKC folds full-width letters
    assert compute_score("em", "[Answer]\n  New   York\n City ", "new york city") == 1.0
    assert normalized_lines(answer_area("[Answer]\n Part 1 \n\n  \nPART  2\n")) == ["part 1", "part 2"]


# ----------------------------------------------------------------------------------------------
# T1 em


def test_em():
    assert compute_score("em", "[Answer] Lyon", ["Paris", "lyon"]) == 1.0  # any of several golds
    assert compute_score("em", "[Answer] Paris, France", "Paris") == 0.0  # exact, not substring
    assert compute_score("em", "[Answer] Paris.", "Paris") == 0.0


# ----------------------------------------------------------------------------------------------
# T2 accuracy


@pytest.mark.parametrize(
    "area, expected",
    [
        ("C", 1.0),
        ("(C)", 1.0),
        ("C.", 1.0),
        ("C) Paris", 1.0),
        ("(C) Paris", 1.0),
        ("c", 1.0),
        ("**C**", 1.0),
        ("C\nbecause the text says so", 1.0),
        ("B", 0.0),
        ("ABCD", 0.0),  # several letters
        ("A B", 0.0),
        ("(A) (C)", 0.0),
        ("C. A.", 0.0),
        ("A\nC", 0.0),  # one letter per line
        ("C\nD) Rome", 0.0),
        ("Paris", 0.0),
        ("", 0.0),
        # issue 15: an answer that names more than one option scores 0 however it is phrased
        ("C or D", 0.0),
        ("(C) or (D)", 0.0),
        ("C) Paris or D) Rome", 0.0),
        ("C. Paris, D. Rome", 0.0),
        ("C. Paris or D", 0.0),
        ("C\nor D", 0.0),
        ("C/D", 0.0),
        ("The correct answer is (C) or (D)", 0.0),
        ("The correct answer is (C) or maybe D.", 0.0),
        ("The correct answer is (C), but (D) also fits.", 0.0),
        ("The correct answer is C or D", 0.0),
        ("The correct answer is either (C) or (D)", 0.0),
        # ... while an option text that mentions letters is still one option
        ("C. Vitamin D", 1.0),
        ("C. Both A and B", 1.0),
        ("(C) Section 4(a) applies", 1.0),
        ("The correct answer is (C). A careful reading of part D confirms it.", 1.0),
        ("C\nC", 1.0),
    ],
)
def test_accuracy_letter(area, expected):
    assert compute_score("accuracy", f"<think>..</think>[Answer]\n{area}", "C") == expected


def test_accuracy_released_phrasing():
    gold = "The correct answer is (B)"  # the released `selection` golden labels use this phrasing
    assert compute_score("accuracy", "A is wrong, C is wrong.\nThe correct answer is (B)", gold) == 1.0
    assert compute_score("accuracy", "The correct answer is B.", "(B)") == 1.0
    assert compute_score("accuracy", "A. first\nB. second\nThe correct answer is (B)", "B") == 1.0  # option list then verdict
    assert compute_score("accuracy", "The correct answer is (B). No, the correct answer is (C)", "B") == 0.0
    assert compute_score("accuracy", "The correct answer is a guess", "A") == 0.0


@pytest.mark.parametrize(
    "gold, area, expected",
    [
        # issue 15: a gold is an option letter only when it is one
        (["E. coli"], "E. faecalis", 0.0),
        (["E. coli"], "E", 0.0),
        (["E. coli"], "(E)", 0.0),
        (["E. coli"], "e. coli", 1.0),
        (["J. Smith"], "J", 0.0),
        (["J. Smith"], "J. Smith", 1.0),
        (["(B) The second contract"], "B", 0.0),
        (["(B) The second contract"], "(B) the second contract", 1.0),
        # letter golds in every spelling still read as letters
        ("C", "(C)", 1.0),
        ("(C)", "C", 1.0),
        ("C.", "C. text", 1.0),
        ("C)", "C", 1.0),
        ("c", "C", 1.0),
        ("The correct answer is (C)", "C", 1.0),
        ("The correct answer is (C).", "The correct answer is (C)", 1.0),
        (["E"], "E", 1.0),
    ],
)
def test_accuracy_gold_letter_only_when_it_is_one(gold, area, expected):
    assert compute_score("accuracy", f"</think>\n[Answer]\n{area}", gold) == expected


def test_accuracy_free_text_gold():
    # LongBench-Pro Accuracy rows: the first line of the answer area equals the gold item
    assert compute_score("accuracy", "[Answer]\nAlice  Smith\nshe signed it", ["alice smith"]) == 1.0
    assert compute_score("accuracy", "[Answer]\nshe signed it\nAlice Smith", ["alice smith"]) == 0.0


# ----------------------------------------------------------------------------------------------
# T3 f1


def test_f1_list():
    # predicted set {part 1, part 2, part 9} (duplicate and blank line dropped), gold {part 1, 2, 3}:
    # P = R = 2/3 -> F1 = 2/3
    assert compute_score("f1", "[Answer]\nPart 1\nPart 2\npart 2\n\nPart 9", ["Part 1", "Part 2", "Part 3"]) == pytest.approx(2 / 3)
    # listing 10 items to cover 3 gold ones: P = 3/10, R = 1 -> F1 = 0.6/1.3
    listing = "\n".join(f"Part {i}" for i in range(1, 11))
    assert compute_score("f1", listing, ["Part 1", "Part 2", "Part 3"]) == pytest.approx(0.6 / 1.3)
    assert compute_score("f1", "[Answer]\n", []) == 1.0  # nothing to find, nothing found


def test_f1_tokens():
    # tokens: pred [big, cat, sat], gold [cat, sat, down] (article dropped): P = R = 2/3
    assert compute_score("f1", "[Answer] The big cat sat!", "the cat sat down") == pytest.approx(2 / 3)
    # CJK characters are tokens: pred 猫 坐 下, gold 猫 坐: P = 2/3, R = 1 -> 0.8
    assert compute_score("f1", "[答案] 猫坐下", "猫坐") == pytest.approx(0.8)


# ----------------------------------------------------------------------------------------------
# T4 math_verify


@pytest.mark.parametrize(
    "area, gold, expected",
    [
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("1/2", "\\frac{1}{2}", 1.0),
        ("\\sqrt{18}", "3\\sqrt{2}", 1.0),
        ("The total is 1000", "1,000", 1.0),
        ("0.055", "5.5%", 1.0),
        ("3", "2", 0.0),
        ("5.5%\n-2.2%", "5.5%\n-2.2%", 1.0),
        ("5.5%\n-2.3%", "5.5%\n-2.2%", 0.5),  # fraction of gold lines right at their position
        ("-2.2%\n5.5%", "5.5%\n-2.2%", 0.0),
        ("No error", "No Error", 1.0),  # not math: normalized text
        ("1023", "R1023", 0.0),  # an identifier, not the number 1023
        ("state_1\nstate_2", "state_1\nstate_2", 1.0),
    ],
)
def test_math_verify(area, gold, expected):
    assert compute_score("math_verify", f"<think>work</think>[Answer]\n{area}", gold) == expected


def test_math_verify_list_gold_and_code_is_data():
    assert compute_score("math_verify", "[Answer]\n4\n9", ["4", "8"]) == 0.5
    assert compute_score("math_verify", "[Answer] __import__('os').system('false')", "0") == 0.0


# ----------------------------------------------------------------------------------------------
# T5 iou

GOLD_TABLE = '{"columns": ["a", "b"], "data": [["1", "x"], [2, "Y"], [3, "z"]]}'


@pytest.mark.parametrize(
    "response, expected",
    [
        ('<answer>{"columns": ["a","b"], "data": [[1, "X"], [2.0, "y"]]}</answer>', 2 / 3),  # 1 == "1", 2.0 == 2
        ('<answer>```json\n{"columns": ["a","b"], "data": [[1,"x"],[2,"y"],[3,"z"]]}\n```</answer>', 1.0),
        ('[Answer]\n{"columns": ["b","a"], "data": [["x",1],["y","2"],["z","3e0"]]}', 1.0),  # column order
        ('<answer>{"columns": ["a","b"], "data": [[1,"x"],[1,"x"]]}</answer>', 1 / 4),  # multiset: 1 / (2 + 2)
        ('<answer>{"columns": ["a","b"], "data": [[1,"x"],[2,"y"],[3,"z"],[4,"w"]]}</answer>', 3 / 4),
        ('<answer>{"columns": ["a","b"], "data": [[1,"x"]</answer>', 0.0),  # malformed JSON
        ('<answer>{"columns": [], "data": []}</answer>', 0.0),
    ],
)
def test_iou(response, expected):
    assert compute_score("iou", response, GOLD_TABLE) == pytest.approx(expected)


def test_iou_cannot_be_inferred():
    empty = '{"columns": [], "data": []}'
    assert compute_score("iou", f"<answer>{empty}</answer>", empty) == 1.0
    assert compute_score("iou", '<answer>```json\n{"data": [], "columns": []}\n```</answer>', empty) == 1.0
    assert compute_score("iou", f"</think>[Answer]\n{empty}", {"columns": [], "data": []}) == 1.0
    assert compute_score("iou", '<answer>{"columns": ["a"], "data": [[1]]}</answer>', empty) == 0.0


@pytest.mark.parametrize(
    "answer",
    ["{}", '{"answer": "Berlin"}', "[]", '""', "null", '{"data": []}', '{"columns": []}',
     '{"columns": {}, "data": []}', '{"columns": [], "data": {}}', "", "cannot be inferred"],
)
def test_iou_no_table_is_not_the_empty_table(answer):
    # issue 15: a JSON value that is not a table (no columns and data lists) scores 0, even against
    # the "cannot be inferred" gold
    assert compute_score("iou", f"<answer>{answer}</answer>", '{"columns": [], "data": []}') == 0.0
    assert compute_score("iou", f"<answer>{answer}</answer>", GOLD_TABLE) == 0.0


# ----------------------------------------------------------------------------------------------
# T6 subem


def test_subem():
    gold = ["Cluster_A 25.00%", "Cluster_B 75.00%"]
    assert compute_score("subem", "[Answer]\nCluster_A 25.00%\nCluster_B 75.00%", gold) == 1.0
    assert compute_score("subem", "[Answer]\nCluster_A 25.00%", gold) == 0.5  # one of two, shorter than the gold
    # words: the, answer, support (the colon is not a word) -> 1 * 1/3
    assert compute_score("subem", "[Answer]\nThe answer: support", "support") == pytest.approx(1 / 3)


def test_subem_enumeration_earns_no_more_than_guessing():
    # listing the three candidates: found 1/1, length factor 1 / 3 words = guessing one of three
    assert compute_score("subem", "[Answer]\nsupport\noppose\nneutral", ["support"]) == pytest.approx(1 / 3)
    percentages = "\n".join(f"Cluster_A {p / 100:.2f}%" for p in range(0, 10001, 25))
    assert compute_score("subem", percentages, ["Cluster_A 25.00%"]) < 0.01
    # a gentler ratio is a config choice: ratio 2 -> 2 / 3
    assert compute_score("subem", "support\noppose\nneutral", ["support"], subem_length_ratio=2.0) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "area, gold, expected",
    [
        # issue 15: a gold item is found only as a whole token sequence of the answer
        ("15", "15", 1.0),
        ("15.", "15", 1.0),  # punctuation around the number is not a word: no length penalty
        ("**15**", "15", 1.0),
        ("15 units", "15", 0.5),  # found, 1 gold word / 2 answer words
        ("150", "15", 0.0),
        ("115", "15", 0.0),
        ("1,500", "15", 0.0),
        ("1.5", "15", 0.0),
        ("-15", "15", 0.0),  # a sign belongs to its number
        ("-2.2%", "-2.2%", 1.0),
        ("2.2%", "-2.2%", 0.0),
        ("unsupported", "support", 0.0),
        ("Support.", "support", 1.0),
        ("state_13", ["state_3"], 0.0),
        ("state_13", ["state_1"], 0.0),
        ("state_13\nstate_1", ["state_1", "state_3"], 0.5),  # found state_1 only; 4 words each side
        ("Cluster_A 25.00%\nCluster_B 75.00%", ["Cluster_A 25.00%", "Cluster_B 75.00%"], 1.0),
        ("Cluster_A 25.0%", ["Cluster_A 25.00%"], 0.0),  # appendix B.8.1: two decimal places
        ("Cluster_AB 25.00%", ["Cluster_A 25.00%"], 0.0),
        ("猫坐下", "猫坐", 2 / 3),  # CJK per character: found, 2 gold characters / 3
        ("小猫", "猫", 0.5),
    ],
)
def test_subem_whole_tokens(area, gold, expected):
    assert compute_score("subem", f"<think>..</think>[Answer]\n{area}", gold) == pytest.approx(expected)


def test_subem_right_answer_always_outranks_wrong_ones():
    # every answer built from the right item and up to three wrong candidates (all orders, with and
    # without a lead-in): any answer holding the right item scores more than any that does not, and
    # with the same lead-in, one more wrong candidate always scores less
    from itertools import permutations

    right, wrong = "15", ["150", "115", "16", "1.5", "15000", "51", "-15"]
    scores = []  # (lead-in, holds the right item, number of wrong candidates, score)
    for lead in ("", "The total is "):
        for n_wrong in range(4):
            for others in permutations(wrong, n_wrong):
                for items in (list(others), [right, *others], [*others, right]):
                    if items:
                        area = lead + "\n".join(items)
                        score = compute_score("subem", f"[Answer]\n{area}", "15")
                        scores.append((lead, right in items, n_wrong, score))
    assert min(s for _, has, _, s in scores if has) > 0.0
    assert max(s for _, has, _, s in scores if not has) == 0.0
    for lead in ("", "The total is "):
        for n in range(3):
            fewer = min(s for ld, has, k, s in scores if ld == lead and has and k == n)
            more = max(s for ld, has, k, s in scores if ld == lead and has and k == n + 1)
            assert more < fewer, (lead, n)
    # a right answer next to a wrong one scores higher than the wrong one alone, for several golds
    for gold, right, wrong in [("support", "support", "oppose"), ("state_3", "state_3", "state_13"),
                               ("Cluster_A 25.00%", "Cluster_A 25.00%", "Cluster_A 25.01%"), ("猫", "猫", "狗")]:
        assert compute_score("subem", f"[Answer]\n{right}\n{wrong}", gold) > compute_score("subem", f"[Answer]\n{wrong}", gold)
        assert compute_score("subem", f"[Answer]\n{right}", gold) > compute_score("subem", f"[Answer]\n{right}\n{wrong}", gold)


# ----------------------------------------------------------------------------------------------
# T7 ndcg, T8 pairwise

IDCG3 = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)


@pytest.mark.parametrize(
    "area, expected",
    [
        ("a\nb\nc", 1.0),
        ("b\na\nc", (2 + 3 / math.log2(3) + 1 / 2) / IDCG3),  # 0.92249
        ("a\na\nb\nc", 1.0),  # a repeated prediction counts once
        ("x\na", (3 / math.log2(3)) / IDCG3),  # not in the gold: relevance 0
        ("x\ny\nz\na", 0.0),  # @k: only the first k = 3 distinct lines count
        ("C\nB\nA", (1 + 2 / math.log2(3) + 3 / 2) / IDCG3),
    ],
)
def test_ndcg(area, expected):
    assert compute_score("ndcg", f"[Answer]\n{area}", ["A", "B", "C"]) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "area, expected",
    [
        ("a\nb\nc", 1.0),
        ("a\nc\nb", 2 / 3),
        ("c\nb\na", 0.0),
        ("a\nb", 1 / 3),  # (a, b) right; pairs with the missing c are wrong
        ("b\na\nb\nc", 2 / 3),  # b counts at its first position: b < a < c
        ("", 0.0),
    ],
)
def test_pairwise(area, expected):
    assert compute_score("pairwise", f"[Answer]\n{area}", ["A", "B", "C"]) == pytest.approx(expected)


def test_pairwise_single_item():
    assert compute_score("pairwise", "[Answer]\nx\nA", ["A"]) == 1.0
    assert compute_score("pairwise", "[Answer]\nx", ["A"]) == 0.0


# ----------------------------------------------------------------------------------------------
# T9 rouge_l


def lcs_table(a, b) -> int:
    """The textbook O(n*m) LCS table, as the reference."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, start=1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def test_lcs_matches_dp_table():
    rng = random.Random(0)
    for n, m in [(0, 5), (1, 1), (63, 64), (64, 65), (130, 70), (200, 199)]:
        for alphabet in ("ab", "abcdefgh"):
            a = [rng.choice(alphabet) for _ in range(n)]
            b = [rng.choice(alphabet) for _ in range(m)]
            assert lcs_length(a, b) == lcs_table(a, b)


def test_rouge_l_matches_rouge_score_on_english():
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rng = random.Random(1)
    words = "the a cat dog sat ran on under mat house 2024 it's U.S. well-known".split()
    pairs = [
        ("The cat sat on the mat.", "A cat was sitting on the mat, it's well-known!"),
        ("Revenue rose 5% in 2024 (U.S. only).", "In 2024, U.S. revenue rose by 5 percent."),
    ]
    pairs += [(" ".join(rng.choices(words, k=400)), " ".join(rng.choices(words, k=700))) for _ in range(3)]
    for reference, prediction in pairs:
        expected = scorer.score(reference, prediction)["rougeL"].fmeasure
        assert compute_score("rouge_l", f"[Answer]\n{prediction}", reference) == pytest.approx(expected, abs=1e-12)


def test_rouge_l_chinese_and_long():
    # CJK characters are tokens: pred 猫坐在垫子上, ref 猫在垫子上坐, LCS 猫在垫子上 = 5 of 6 -> 5/6
    assert tokens("猫坐在垫子上 ok") == ["猫", "坐", "在", "垫", "子", "上", "ok"]
    assert compute_score("rouge_l", "[答案]\n猫坐在垫子上", "猫在垫子上坐") == pytest.approx(5 / 6)
    # several references: the best one
    assert compute_score("rouge_l", "the cat sat on the mat", ["a cat on a mat", "the cat sat"]) == pytest.approx(2 / 3)
    # thousands of words, no recursion limit: a 6,000-word summary against its own first half
    text = " ".join(f"w{i % 997}" for i in range(6000))
    half = " ".join(text.split()[:3000])
    assert compute_score("rouge_l", text, half) == pytest.approx(2 * 0.5 * 1 / 1.5)


# ----------------------------------------------------------------------------------------------
# retrieval_calculate (released composite)

RC_GOLD = {"doc_ids": ["<|doc_2|>", "<|doc_1|>"], "golden_label": "7/18"}


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<relevant_doc_ids><|doc_1|>, <|doc_2|></relevant_doc_ids><continue_reasoning>so \\boxed{\\frac{7}{18}}</continue_reasoning>", 1.0),
        ("<relevant_doc_ids><|doc_1|></relevant_doc_ids><continue_reasoning>\\boxed{\\frac{7}{18}}</continue_reasoning>", 0.0),
        ("<relevant_doc_ids><|doc_1|><|doc_2|></relevant_doc_ids><continue_reasoning>\\boxed{\\frac{1}{3}}</continue_reasoning>", 0.0),
        ("<relevant_doc_ids><|doc_1|><|doc_2|></relevant_doc_ids> \\boxed{\\frac{7}{18}}", 0.0),
    ],
)
def test_retrieval_calculate(response, expected):
    assert compute_score("retrieval_calculate", "<think>x</think>" + response, RC_GOLD) == expected


# ----------------------------------------------------------------------------------------------
# Registry and routing


def test_registry():
    assert REWARD_TYPES == ("em", "accuracy", "f1", "math_verify", "iou", "subem", "ndcg", "pairwise", "rouge_l")
    assert TASK_TO_REWARD == {f"T{i + 1}": r for i, r in enumerate(REWARD_TYPES)}
    assert REWARD_TO_TASK["rouge_l"] == "T9" and REWARD_TO_TASK["retrieval_calculate"] == "T4"
    assert set(REWARD_TYPES) | {"retrieval_calculate"} <= set(registered_types())
    with pytest.raises(ValueError, match="unknown reward type 'bleu'; known reward types: em, accuracy"):
        validate_reward_type("bleu")
    with pytest.raises(ValueError, match="unknown reward type"):
        compute_score("bleu", "x", "x")
    with pytest.raises(ValueError, match="'em' is already registered"):
        register("em")(lambda answer, gold, rules: 0.0)


# the released-format document's table, restated independently of the code's table
LONGBENCH_PRO = {
    "ndcg": ["T1.1 Global Cohesive Retrieval", "T1.2 Key-Snippet Retrieval"],
    "pairwise": ["T2.1 Global Timeline Reconstruction", "T2.2 Local Causal Chain Sorting", "T6.3 Global Frequency Analysis"],
    "accuracy": ["T3.1 Multi-Doc Integration QA", "T3.2 Single-Hop Fact QA", "T11.1 Long-Range Entity & Commitment Tracking",
                 "T11.2 Short-Range Reference Resolution & State Query"],
    "rouge_l": ["T4.1 Global-Coverage Constrained Summary", "T4.2 Query-Focused Summary"],
    "f1": ["T5.1 Full-Sentence Citation Alignment", "T5.2 Key-Statement Citation Alignment", "T6.2 Targeted Subset Cluster Identification",
           "T7.1 Global Conflict & Inconsistency Localization", "T7.2 Targeted Rule or Condition Violation Detection",
           "T7.3 Comprehensive Error & Anomaly Sweep", "T9.1 Dependency-Aware Multi-Version Impact Analysis",
           "T9.2 Localized Interface Change Detection"],
    "subem": ["T6.1 Large-Scale Document Clustering", "T8.1 Structured Multi-Source Consistency Verification",
              "T8.2 Single-Source Targeted Aggregation", "T8.3 Long-Context Procedural State Tracking",
              "T10.1 Large-Scale In-Context Rule Induction", "T10.2 Targeted Example-Based Rule Induction"],
}


def record(data_source, reward_mode=None, **truth):
    return {"data_source": data_source, "reward_model": {"ground_truth": truth}, "extra_info": {"reward_mode": reward_mode}}


def test_route_longbench_pro_subtasks():
    items = ["Part 1", "Part 2"]
    for reward, modes in LONGBENCH_PRO.items():
        for mode in modes:
            subtask_id, name = mode.split(" ", 1)
            for spelling in (mode, subtask_id, name, mode.upper()):
                assert route_released(record("longbench_pro", spelling, doc_ids=items, summary="English")) == (reward, items)
    assert route_released(record("longbench_pro", "Pairwise_Accuracy", doc_ids=items))[0] == "pairwise"


def test_route_other_sources():
    assert route_released(record("EM", "whatever", golden_label="Paris")) == ("em", "Paris")
    assert route_released(record("selection", golden_label="The correct answer is (B)")) == ("accuracy", "The correct answer is (B)")
    assert route_released(record("math_longcot_math_verify", golden_label=42)) == ("math_verify", "42")
    assert route_released(record("multitableqa_pretraining", golden_label=GOLD_TABLE)) == ("iou", GOLD_TABLE)
    assert route_released(record("retrieval_calculate", doc_ids=("<|doc_1|>",), golden_label="3")) == (
        "retrieval_calculate", {"doc_ids": ["<|doc_1|>"], "golden_label": "3"})
    listed = {"data_source": "EM", "reward_model": {"ground_truth": [{"golden_label": "old"}, {"golden_label": "new"}]}}
    assert route_released(listed) == ("em", "new")  # a list of ground truths: the last one is scored


def test_route_errors():
    with pytest.raises(ValueError, match=r"unknown data_source 'qa_v2'; known data sources: EM, selection"):
        route_released(record("qa_v2", golden_label="x"))
    with pytest.raises(ValueError, match=r"unknown extra_info.reward_mode 'T99.1 Poetry' for data_source 'longbench_pro'; known reward modes: T1.1"):
        route_released(record("longbench_pro", "T99.1 Poetry", doc_ids=["x"]))
    with pytest.raises(ValueError, match="ground_truth has no golden_label"):
        route_released(record("EM", doc_ids=["x"]))
    with pytest.raises(ValueError, match="doc_ids must be a list"):
        route_released(record("longbench_pro", "T1.1", doc_ids="Part 1"))


def test_routed_records_score():
    # a LongBench-Pro Accuracy row with an option-letter gold and one with a free-text gold
    letter = route_released(record("longbench_pro", "T3.2 Single-Hop Fact QA", doc_ids=["C"]))
    text = route_released(record("longbench_pro", "T11.1", doc_ids=["the blue folder"]))
    assert compute_score(letter[0], "<think>..</think>[Answer]\nC", letter[1]) == 1.0
    assert compute_score(text[0], "<think>..</think>[Answer]\nThe Blue Folder", text[1]) == 1.0
    reward, gold = route_released(record("selection", golden_label="The correct answer is (B)"))
    assert compute_score(reward, "<think>..</think>The correct answer is (B)", gold) == 1.0


def test_reward_config():
    cfg = load(RewardConfig, None, ["start_method=spawn", "extra_modules=[my.rewards]", "subem_length_ratio=2"])
    assert (cfg.start_method, cfg.extra_modules, cfg.subem_length_ratio) == ("spawn", ["my.rewards"], 2.0)
    with pytest.raises(ConfigError, match="start_method.*'fork' is not one of"):
        load(RewardConfig, None, ["start_method=fork"])
    with pytest.raises(ConfigError, match="subem_length_ratio: must be >= 1"):
        load(RewardConfig, None, ["subem_length_ratio=0.5"])
    with pytest.raises(ConfigError, match="worker_max_items: must be >= 1"):
        load(RewardConfig, None, ["worker_max_items=0"])
