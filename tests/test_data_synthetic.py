"""The demo dataset: valid rows, four questions per document, splits by document, one fixed skeleton
of single-token words, full marks for right answers, chance for a policy that does not read, and no
reward for listing candidates."""
import json
import random
import re
import statistics

import pytest

from golong.data.config import DataConfig
from golong.data.loader import load_examples
from golong.data.synthetic import LETTERS, SLOTS, TASKS, all_documents, answer_text, demo_corpus, demo_splits, write_rows
from golong.demo import DEMO_MODEL
from golong.rewards import compute_score
from golong.tiny_model import train_tokenizer


@pytest.fixture(scope="module")
def splits():
    return demo_splits(train_docs=40, eval_docs=20, warmup_docs=30)


@pytest.fixture(scope="module")
def demo(splits, tmp_path_factory):
    path = write_rows(str(tmp_path_factory.mktemp("demo") / "train.jsonl"), splits["train"])
    return path, load_examples([path], DataConfig()).examples


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(demo_corpus(), vocab_size=DEMO_MODEL.vocab_size, byte_level=DEMO_MODEL.byte_level)


def values_of(context: str) -> dict[str, str]:
    return dict(re.findall(r"The (\w+) is (\w+)\.", context))


def test_rows_are_valid_and_every_document_is_asked_four_questions(demo, splits):
    path, examples = demo
    assert len(examples) == 160
    assert {e.task for e in examples} == set(TASKS) == {"T1", "T2", "T3", "T6"}
    assert {e.reward_type for e in examples} == {"em", "accuracy", "f1", "subem"}
    rows = splits["train"]
    for doc in range(40):
        mine = rows[4 * doc:4 * doc + 4]
        assert [r["task"] for r in mine] == list(TASKS)
        assert len({r["context"] for r in mine}) == 1 and len({r["id"].rsplit("-", 1)[0] for r in mine}) == 1
    assert len({r["id"] for r in rows}) == 160


def test_splits_are_by_document_disjoint_and_deterministic(splits):
    """Held-out, warm-up and training documents state different value combinations (so no held-out
    fact set is ever trained on, under any question), and the same call gives the same rows."""
    assert [len(splits[s]) for s in ("eval", "warmup", "train")] == [80, 120, 160]
    combos = {name: {tuple(values_of(r["context"]).values()) for r in rows} for name, rows in splits.items()}
    assert [len(combos[s]) for s in ("eval", "warmup", "train")] == [20, 30, 40]
    assert not combos["eval"] & (combos["train"] | combos["warmup"]) and not combos["warmup"] & combos["train"]
    assert demo_splits(train_docs=40, eval_docs=20, warmup_docs=30) == splits
    assert demo_splits(train_docs=40, eval_docs=20, warmup_docs=30, seed=1) != splits
    assert len(all_documents()) == 6 * 4 * 6 * 6
    with pytest.raises(ValueError, match="864 documents; asked for 64 held-out"):
        demo_splits(train_docs=800, eval_docs=64, warmup_docs=1)


def test_one_skeleton_of_single_tokens_the_same_in_contexts_and_answers(splits, tokenizer):
    """Every value is one token, the same in a context and in an answer; every context has the same
    tokens but the values, so each slot is at the same position in every document."""
    tok = tokenizer
    for word in [v for values in SLOTS.values() for v in values] + list(LETTERS):
        assert tok.tokenize("The " + word + ".") == ["▁The", "▁" + word, "."]  # as in a context
        assert tok.tokenize(answer_text(word))[-2:] == ["\n", "▁" + word]  # as in an answer: the same token
    text = answer_text(["rome", "rice"])
    assert text == "[Answer]\n rome\n rice" and tok.decode(tok(text)["input_ids"]) == text
    contexts = [tok.tokenize(r["context"]) for rows in splits.values() for r in rows]
    skeleton = [t for t in contexts[0] if t[1:] not in {v for values in SLOTS.values() for v in values}]
    assert len(skeleton) == len(contexts[0]) - len(SLOTS) == 16
    for tokens in contexts:
        assert len(tokens) == 20
        assert [t for i, t in enumerate(tokens) if i not in (3, 8, 13, 18)] == skeleton
    assert [contexts[0][i] for i in (3, 8, 13, 18)] == ["▁" + v for v in values_of(splits["eval"][0]["context"]).values()]


def test_answers_follow_from_the_context(splits):
    for rows in splits.values():
        for row in rows:
            values = values_of(row["context"])
            assert list(values) == list(SLOTS) and all(values[s] in SLOTS[s] for s in SLOTS)
            expected = {"T1": values["colour"], "T2": "ABCD"[SLOTS["animal"].index(values["animal"])],
                        "T3": [values["city"], values["food"]], "T6": [values["city"]]}[row["task"]]
            assert row["answer"] == expected
            if row["task"] == "T2":
                assert re.findall(r"^([A-D])\. (\w+)$", row["question"], re.M) == list(zip("ABCD", SLOTS["animal"]))


def test_correct_answers_score_one(demo):
    path, examples = demo
    rows = [json.loads(line) for line in open(path)]
    assert answer_text("C") == "[Answer]\n C"
    assert all(compute_score(e.reward_type, answer_text(r["answer"]), e.ground_truth) == 1.0
               for e, r in zip(examples, rows))


def test_a_policy_that_does_not_read_earns_chance(demo):
    """Answers of the right kind drawn without reading the context: 1/6 on T1, T3 and T6 (T3's F1 is
    the share of its two lines that are right), 1/4 on T2 (expected values; 400 draws a row)."""
    _, examples = demo
    rng = random.Random(0)
    guess = {"T1": lambda: rng.choice(SLOTS["colour"]), "T2": lambda: rng.choice(LETTERS),
             "T3": lambda: [rng.choice(SLOTS["city"]), rng.choice(SLOTS["food"])],
             "T6": lambda: rng.choice(SLOTS["city"])}
    means = {}
    for e in examples:
        means.setdefault(e.task, []).append(statistics.mean(
            compute_score(e.reward_type, answer_text(guess[e.task]()), e.ground_truth) for _ in range(400)))
    per_task = {t: statistics.mean(v) for t, v in means.items()}
    assert per_task == pytest.approx({"T1": 1 / 6, "T2": 1 / 4, "T3": 1 / 6, "T6": 1 / 6}, abs=0.01)


def test_listing_candidates_pays_no_more_than_a_guess(demo):
    """A response that lists every candidate instead of reading: em and accuracy score 0, subem
    divides by the length (1/6, a guess's expectation), and f1 over 12 lines with 2 right is 2/7,
    far below a right answer; the recipe's 12-token cap leaves room for 3 answer lines only."""
    _, examples = demo
    listing = {"T1": SLOTS["colour"], "T2": list(LETTERS), "T3": SLOTS["city"] + SLOTS["food"], "T6": SLOTS["city"]}
    expected = {"T1": 0.0, "T2": 0.0, "T3": 2 / 7, "T6": 1 / 6}
    for e in examples:
        assert compute_score(e.reward_type, answer_text(listing[e.task]), e.ground_truth) == pytest.approx(expected[e.task])
