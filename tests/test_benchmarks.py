"""The six long-context benchmarks (golong/benchmarks/): loaders on rows written in each release's format,
the official metrics on right, wrong, malformed and adversarial answers (scores worked out by hand), the
LLM judge through a real local OpenAI-compatible HTTP server, middle truncation, the report, and one
`golong eval --benchmark longbench_v2` run with the tiny model."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from golong.benchmarks import Benchmark, get_benchmark, load_items, middle_truncate, register
from golong.benchmarks.base import JUDGE_ERROR, JUDGE_MALFORMED, NO_ANSWER, OK, UNFINISHED
from golong.benchmarks.docmath import extract_number, numbers_match
from golong.benchmarks.judge import Judge, JudgeOptions
from golong.benchmarks.longbench_qa import normalize_answer, qa_f1_score
from golong.benchmarks.mrcr import grade, length_bin
from golong.benchmarks.run import (
    Prompted,
    benchmark_report,
    data_files,
    fit_to_budget,
    score_responses,
    suite_table,
)
from golong.configlib import UsageError
from golong.data.schema import DataError
from golong.eval import main as eval_main
from test_data_synthesize import ScriptedServer


def write_json(path, rows):
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return str(path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def score(bench, item, response, judge=None):
    return bench.score(item, response, judge)


def prompted(bench, items, tokens=None):
    return Prompted(bench, items, [bench.messages(i) for i in items], tokens or [100] * len(items), [False] * len(items))


# ----------------------------------------------------------------------------------------------
# Registry


def test_registry_rejects_a_duplicate_and_lists_valid_names():
    class Again(Benchmark):
        name = "mrcr"

    with pytest.raises(ValueError, match="already registered"):
        register(Again())
    with pytest.raises(UsageError) as e:
        get_benchmark("longbench")
    assert "longbench_v2, mrcr, longbench_qa, docmath, frames, corpusqa" in str(e.value)


# ----------------------------------------------------------------------------------------------
# Middle truncation


def test_middle_truncation_keeps_exact_token_ids():
    ids = list(range(10))
    assert middle_truncate(ids, 5) == [0, 1, 7, 8, 9]  # V2: ids[:5//2] + ids[-5//2:], 2 in front, 3 at the end
    assert middle_truncate(ids, 5) == ids[:5 // 2] + ids[-5 // 2:]
    assert middle_truncate(ids, 5, equal_halves=True) == [0, 1, 8, 9]  # V1: half = int(5/2) on each side
    assert middle_truncate(ids, 6) == [0, 1, 2, 7, 8, 9]
    assert middle_truncate(ids, 10) == ids and middle_truncate(ids, 11) == ids
    with pytest.raises(ValueError):
        middle_truncate(ids, 1)


def test_fit_to_budget_cuts_the_last_turn_to_the_room_the_template_leaves(tiny_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    content = " ".join(f"w{i}" for i in range(300))
    messages = [{"role": "user", "content": content}]
    render = lambda m: tok(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"]
    total, overhead = len(render(messages)), len(render([{"role": "user", "content": ""}]))
    budget = overhead + 41
    fitted, before, cut = fit_to_budget(messages, tok, budget, enable_thinking=True, equal_halves=False)
    assert (before, cut) == (total, True)
    ids = tok(content, add_special_tokens=False)["input_ids"]
    assert fitted[0]["content"] == tok.decode(ids[:20] + ids[-21:], skip_special_tokens=True)  # 41 = 20 + 21
    assert fitted[0]["content"].startswith("w0 w1 ") and fitted[0]["content"].endswith(" w298 w299")
    assert len(render(fitted)) <= budget
    same, _, cut = fit_to_budget(messages, tok, total, enable_thinking=True, equal_halves=False)
    assert same == messages and not cut


# ----------------------------------------------------------------------------------------------
# LongBench-V2


def lbv2_row(i, answer="B", difficulty="easy", length="short", context="The owl lives in the barn."):
    return {"_id": f"id{i}", "domain": "Single-Document QA", "sub_domain": "Literary", "difficulty": difficulty,
            "length": length, "question": f"Where does the owl live? ({i})", "choice_A": "In a tree",
            "choice_B": "In the barn", "choice_C": "Underground", "choice_D": "Nowhere", "answer": answer,
            "context": context}


def test_longbench_v2_loader_prompt_and_answer_extraction(tmp_path):
    bench = get_benchmark("longbench_v2")
    path = write_json(tmp_path / "data.json", [lbv2_row(0), lbv2_row(1, "C", "hard", "long")])
    items = load_items(bench, [path])
    assert [(i.id, i.gold, i.groups) for i in items] == [
        ("id0", "B", {"difficulty": "easy", "length": "short"}), ("id1", "C", {"difficulty": "hard", "length": "long"})]
    prompt = bench.messages(items[0])[0]["content"]
    assert prompt.startswith("Please read the following text and answer the question below.\n\n<text>\n"
                             "The owl lives in the barn.\n</text>\n\nWhat is the correct answer to this question: "
                             "Where does the owl live? (0)\nChoices:\n(A) In a tree\n(B) In the barn\n")
    assert prompt.endswith('Format your response as follows: "The correct answer is (insert answer here)".')
    item = items[0]
    cases = {
        "The correct answer is (B)": (1.0, OK),
        "**The correct answer is (B)**": (1.0, OK),  # pred.py removes '*' first
        "Reasoning... The correct answer is B.": (1.0, OK),  # the bare-letter pattern
        "The correct answer is (A)": (0.0, OK),
        "I think it is the barn, B.": (0.0, NO_ANSWER),  # malformed: no statement
        "The correct answer is (A) or (B)": (0.0, NO_ANSWER),  # two options named: a hedge scores 0
        "The correct answer is A or B": (0.0, NO_ANSWER),
        "The correct answer is (B). On reflection, the correct answer is (A).": (0.0, NO_ANSWER),
        "The correct answer is (A/B)": (0.0, NO_ANSWER),
        "<think>The correct answer is (A)</think>\n\nThe correct answer is (B)": (1.0, OK),  # reasoning not read
        "<think>The correct answer is (B)</think>\n\nThe correct answer is (A)": (0.0, OK),
        "<think>The correct answer is (B)": (0.0, UNFINISHED),
    }
    for response, expected in cases.items():
        s = score(bench, item, response)
        assert (s.value, s.status) == expected, response
    hard = items[1]  # option text after the letter is not a second option
    assert score(bench, hard, "The correct answer is (C) Underground, A deep hole.").value == 1.0
    with pytest.raises(DataError, match="expected one of A, B, C, D"):
        load_items(bench, [write_json(tmp_path / "bad.json", [lbv2_row(0, answer="E")])])


def test_longbench_v2_report_breaks_down_by_difficulty_and_length(tmp_path):
    bench = get_benchmark("longbench_v2")
    items = load_items(bench, [write_json(tmp_path / "data.json", [
        lbv2_row(0, "B", "easy", "short"), lbv2_row(1, "B", "hard", "short"), lbv2_row(2, "B", "hard", "long")])])
    p = prompted(bench, items)
    responses = [["The correct answer is (B)", "The correct answer is (B)"],  # 1, 1
                 ["The correct answer is (B)", "The correct answer is (A)"],  # 1, 0
                 ["no idea", "The correct answer is (C)"]]  # 0 (no answer), 0
    report = benchmark_report(p, score_responses(p, responses, None, False))
    assert report["score"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    assert report["breakdown"]["difficulty"] == {"easy": {"rows": 1, "score": 100.0}, "hard": {"rows": 2, "score": 25.0}}
    assert report["breakdown"]["length"]["short"] == {"rows": 2, "score": 75.0}
    assert report["statuses"] == {"ok": 5, "no_answer": 1}
    assert (report["rows"], report["responses"]) == (3, 6)


# ----------------------------------------------------------------------------------------------
# MRCR


def mrcr_row(prefix="aZ3kQ9", answer_text="The tapir sleeps under the moon.", needles=2):
    convo = [{"role": "user", "content": "write a poem about tapirs"},
             {"role": "assistant", "content": answer_text},
             {"role": "user", "content": "write a poem about owls"},
             {"role": "assistant", "content": "Owls hoot."},
             {"role": "user", "content": f"Prepend {prefix} to the 1st (1 indexed) poem about tapirs. "
                                         "Do not include any other text in your response."}]
    return {"prompt": json.dumps(convo), "answer": prefix + answer_text, "random_string_to_prepend": prefix,
            "n_needles": needles, "desired_msg_index": 1, "total_messages": 5, "n_chars": 180}


def test_mrcr_grading_requires_the_prefix_and_uses_sequence_matcher(tmp_path):
    bench = get_benchmark("mrcr")
    path = str(tmp_path / "2needle.parquet")
    pq.write_table(pa.Table.from_pylist([mrcr_row()]), path)
    item = load_items(bench, [path])[0]
    assert bench.messages(item)[-1]["content"].startswith("Prepend aZ3kQ9 to the 1st")
    assert len(bench.messages(item)) == 5 and item.question.startswith("Prepend aZ3kQ9")
    exact = "aZ3kQ9The tapir sleeps under the moon."
    assert score(bench, item, exact).value == 1.0
    no_prefix = score(bench, item, "The tapir sleeps under the moon.")
    assert (no_prefix.value, no_prefix.status) == (0.0, NO_ANSWER)
    assert grade("The tapir sleeps under the moon.", exact, "aZ3kQ9") == 0.0
    # "abc" + "hello word" against "abc" + "hello world": 10 matching characters, 10 + 11 in all -> 20/21.
    assert grade("abchello word", "abchello world", "abc") == pytest.approx(20 / 21)
    assert score(bench, item, "<think>where was it...</think>\n\n" + exact).value == 1.0  # after the reasoning
    # "The tapir sleeps." vs "The tapir sleeps under the moon.": "The tapir sleeps" (16) and the final "." (1)
    # match, of 17 + 32 characters: 2 * 17 / 49.
    assert score(bench, item, "aZ3kQ9The tapir sleeps.").value == pytest.approx(2 * 17 / 49)


def test_mrcr_length_bins_follow_the_release_table():
    assert [length_bin(n) for n in (100, 4096, 4097, 8192, 8193, 131072, 131073, 1048576, 1048577)] == [
        "<=4K", "<=4K", "4K-8K", "4K-8K", "8K-16K", "64K-128K", "128K-256K", "512K-1M", ">1M"]
    bench = get_benchmark("mrcr")
    assert bench.truncation == "skip"


def test_mrcr_report_per_bin(tmp_path):
    bench = get_benchmark("mrcr")
    path = write_jsonl(tmp_path / "mrcr.jsonl", [mrcr_row(), mrcr_row(prefix="q1"), mrcr_row(prefix="zz")])
    items = load_items(bench, [path])
    p = prompted(bench, items, tokens=[5000, 6000, 20000])
    responses = [["aZ3kQ9The tapir sleeps under the moon."], ["nope"], ["zzThe tapir sleeps under the moon."]]
    report = benchmark_report(p, score_responses(p, responses, None, False))
    assert report["breakdown"]["length_bin"] == {"16K-32K": {"rows": 1, "score": 100.0},
                                                 "4K-8K": {"rows": 2, "score": 50.0}}
    assert report["score"] == pytest.approx(200 / 3)


# ----------------------------------------------------------------------------------------------
# LongBench QA


def lb_row(dataset, question, answers, i=0):
    return {"input": question, "context": "Passage 1:\nThe Eiffel Tower is in Paris.", "answers": answers,
            "length": 8, "dataset": dataset, "language": "en", "all_classes": None, "_id": f"{dataset}{i}"}


def test_longbench_qa_f1_normalisation_and_prompts(tmp_path):
    assert normalize_answer("The Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("An apple, a pear; the end.") == "apple pear end"
    assert qa_f1_score("The Eiffel Tower.", "Eiffel tower") == 1.0
    # [big, red, barn] vs [red, barn]: 2 common, P 2/3, R 1 -> F1 0.8
    assert qa_f1_score("the big red barn", "a red barn") == pytest.approx(0.8)
    assert qa_f1_score("Paris", "London") == 0.0
    assert qa_f1_score("...", "London") == 0.0  # nothing left after normalisation
    bench = get_benchmark("longbench_qa")
    hotpot = write_jsonl(tmp_path / "hotpotqa.jsonl", [lb_row("hotpotqa", "Where is the tower?", ["Paris", "Paris, France"])])
    item = load_items(bench, [hotpot])[0]
    assert bench.messages(item)[0]["content"] == (
        "Answer the question based on the given passages. Only give me the answer and do not output any other "
        "words.\n\nThe following are given passages.\nPassage 1:\nThe Eiffel Tower is in Paris.\n\nAnswer the "
        "question based on the given passages. Only give me the answer and do not output any other words.\n\n"
        "Question: Where is the tower?\nAnswer:")
    assert score(bench, item, "Paris, France.").value == 1.0  # the best gold counts
    # "in paris" vs "paris": P 1/2, R 1 -> 2/3; vs "paris france": 1 common, P 1/2, R 1/2 -> 1/2; best 2/3
    assert score(bench, item, "In Paris").value == pytest.approx(2 / 3)
    assert score(bench, item, "<think>London?</think>\nParis").value == 1.0
    assert bench.truncation_equal_halves  # V1's pred.py keeps int(budget/2) on each side


def test_longbench_qa_headline_is_the_mean_of_the_datasets(tmp_path):
    bench = get_benchmark("longbench_qa")
    nq = write_jsonl(tmp_path / "narrativeqa.jsonl", [lb_row("narrativeqa", "Who?", ["Anna"])])
    # A row without `dataset` takes it from its file name (the _e variants included).
    qasper = write_jsonl(tmp_path / "qasper_e.jsonl", [
        {k: v for k, v in lb_row("x", f"Q{i}", ["yes"], i).items() if k != "dataset"} for i in range(3)])
    items = load_items(bench, [nq, qasper])
    assert [i.groups["dataset"] for i in items] == ["narrativeqa", "qasper", "qasper", "qasper"]
    assert bench.messages(items[1])[0]["content"].startswith("You are given a scientific article and a question.")
    p = prompted(bench, items)
    report = benchmark_report(p, score_responses(p, [["Anna"], ["yes"], ["no"], ["no"]], None, False))
    assert report["score"] == pytest.approx((100 + 100 / 3) / 2)  # not the row mean (50)
    with pytest.raises(DataError, match="not one of the QA datasets"):
        load_items(bench, [write_jsonl(tmp_path / "trec.jsonl", [lb_row("trec", "Q", ["a"])])])


# ----------------------------------------------------------------------------------------------
# DocMath


def test_docmath_numeric_comparison():
    assert extract_number("Revenue was 10 in 2019. Therefore, the answer is 12%.") == 12.0
    assert extract_number("so the total is $1,234.5 million") == 1234.5
    assert extract_number("Therefore, the answer is −5.2.") == -5.2
    assert extract_number("no number here") is None
    assert numbers_match(12.0, 0.12)  # "12%" vs 0.12: pred / 100
    assert numbers_match(0.12, 12.0)  # "0.12" vs 12 (a percent): pred x 100
    assert not numbers_match(12.0, 0.12, scale=False)
    assert numbers_match(12.6, 12.5) and not numbers_match(12.7, 12.5)  # |diff| <= 1% of 12.5 = 0.125
    assert numbers_match(3.4, 3) and not numbers_match(3.6, 3)  # an integer gt: round(pred) == gt
    assert numbers_match(-5.2, -5.2) and not numbers_match(5.2, -5.2)
    assert numbers_match(0.0, 0.0) and not numbers_match(0.001, 0.0)
    assert not numbers_match(float("nan"), 1.0) and not numbers_match(float("inf"), 3)


def test_docmath_loader_and_score(tmp_path):
    bench = get_benchmark("docmath")
    rows = [{"question_id": "simpshort-0", "question": "What is the growth rate?",
             "paragraphs": ["Revenue grew from 100 to 112."], "tables": ["| year | rev |\n|---|---|\n| 2020 | 112 |"],
             "ground_truth": 0.12},
            {"question_id": "simpshort-1", "question": "How many segments?", "paragraphs": ["Three segments."],
             "tables": [], "ground_truth": 3}]
    path = write_json(tmp_path / "simpshort_testmini.json", rows)
    items = load_items(bench, [path])
    assert [(i.gold, i.groups["subset"]) for i in items] == [(0.12, "simpshort"), (3, "simpshort")]
    system, user = bench.messages(items[0])
    assert system["role"] == "system" and "Therefore, the answer is {final answer}" in system["content"]
    assert user["content"] == ("Revenue grew from 100 to 112.\n| year | rev |\n|---|---|\n| 2020 | 112 |\n\n"
                               "Question: What is the growth rate?\n\nLet's think step by step to answer the given question.")
    first, second = items
    assert score(bench, first, "Growth is 12/100. Therefore, the answer is 12%.").value == 1.0
    assert score(bench, first, "Therefore, the answer is 0.1201").value == 1.0
    assert score(bench, first, "Therefore, the answer is 0.13").value == 0.0
    s = score(bench, first, "I cannot tell.")
    assert (s.value, s.status) == (0.0, NO_ANSWER)
    assert score(bench, second, "There are 2 new and 1 old. Therefore, the answer is 3.").value == 1.0
    # The test split has no answers: it loads for decontamination, and is refused for scoring.
    test_split = write_json(tmp_path / "simpshort_test.json", [{k: v for k, v in rows[0].items() if k != "ground_truth"}])
    assert bench.parse(json.loads(open(test_split).read())[0], test_split, 1).gold is None
    with pytest.raises(DataError, match="ground_truth"):
        load_items(bench, [test_split])


# ----------------------------------------------------------------------------------------------
# Judge-scored: Frames, CorpusQA, through a real local chat-completions server


def judge_server(replies: dict):
    """test_data_synthesize's scripted OpenAI-compatible server (a real HTTP server on 127.0.0.1): a judge
    prompt is routed by the `DOC:name` tag the test puts in its question (or gold); None answers HTTP 500."""
    server = ScriptedServer()
    server.script = {name: [("status", 500)] if text is None else [("reply", text)] for name, text in replies.items()}
    return server


def prompts_of(server, name: str) -> str:
    return server.prompts[f"generate:{name}"]


def frames_tsv(path, rows):
    lines = ["Unnamed: 0\tPrompt\tAnswer\treasoning_types\twiki_links\tcontext"]
    lines += [f"{i}\t{q}\t{a}\tNumerical reasoning\t['https://en.wikipedia.org/wiki/Owl']\t{c}" for i, (q, a, c) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_frames_judge_right_wrong_malformed_and_failed(tmp_path):
    bench = get_benchmark("frames")
    path = frames_tsv(tmp_path / "test.tsv", [(f"DOC:q{k} How many owls?", "Seven", "Owl article text.") for k in range(4)])
    items = load_items(bench, [path])
    assert bench.messages(items[0])[0]["content"].startswith("Here are the relevant Wikipedia articles:\nOwl article text.")
    replies = {"q0": "Explanation: the response says seven.\nDecision: TRUE",
               "q1": 'Explanation: it says six.\n"Decision:" "FALSE"',
               "q2": "I am not sure what to say.",  # malformed: no decision
               "q3": None}  # the judge fails: HTTP 500
    with judge_server(replies) as server:
        judge = Judge(JudgeOptions(endpoint=server.url, model="judge", max_retries=0, concurrency=4, timeout_s=30))
        p = prompted(bench, items)
        responses = [["<think>six?</think>There are seven owls."], ["Six."], ["Seven."], ["Seven."]]
        scores = score_responses(p, responses, judge, False, concurrency=4)
    assert [(s[0].value, s[0].status) for s in scores] == [(1.0, OK), (0.0, OK), (0.0, JUDGE_MALFORMED), (0.0, JUDGE_ERROR)]
    prompt = prompts_of(server, "q0")
    assert "- Predicted Answer: There are seven owls.\n- Ground Truth Answer: Seven\n" in prompt  # no reasoning
    assert prompt.startswith("===Task===\nI need your help in evaluating an answer provided by an LLM")
    report = benchmark_report(p, scores)
    assert report["score"] == 25.0 and report["statuses"] == {"ok": 2, "judge_malformed": 1, "judge_error": 1}
    # A row without the articles cannot be prompted (golong fetches nothing); decontamination needs none.
    bare = tmp_path / "bare.tsv"
    bare.write_text("Prompt\tAnswer\twiki_links\nHow many owls?\tSeven\t[]\n", encoding="utf-8")
    with pytest.raises(DataError, match="add the linked articles' text"):
        bench.messages(load_items(bench, [str(bare)])[0])


def test_corpusqa_judge_tries_each_accepted_answer(tmp_path):
    bench = get_benchmark("corpusqa")
    path = write_jsonl(tmp_path / "corpusqa.jsonl", [
        {"id": "c0", "question": "Which city?", "answer": ["DOC:no Lutetia", "DOC:yes Paris"], "documents": ["Doc one.", "Doc two."]},
        {"id": "c1", "question": "DOC:bad Which city?", "answer": "Paris", "documents": ["Doc one."]}])
    items = load_items(bench, [path])
    assert "<text>\nDoc one.\n\nDoc two.\n</text>\n\nWhich city?" in bench.messages(items[0])[0]["content"]
    replies = {"no": "Different names. [[NO]]", "yes": "Same city. [[YES]]", "bad": "Hmm, YES maybe"}
    with judge_server(replies) as server:
        judge = Judge(JudgeOptions(endpoint=server.url, model="judge", max_retries=0, timeout_s=30))
        p = prompted(bench, items)
        scores = score_responses(p, [["Therefore, the answer is (Paris)."], ["Therefore, the answer is Paris."]], judge, False)
    assert [(s[0].value, s[0].status) for s in scores] == [(1.0, OK), (0.0, JUDGE_MALFORMED)]
    assert prompts_of(server, "yes").endswith("Problem: Which city?\nAnswer 1: DOC:yes Paris\nAnswer 2: Paris")
    assert [name for _, name, _ in server.requests] == ["no", "yes", "bad"]  # each accepted answer in turn


def test_judge_benchmark_without_a_judge_is_a_usage_error_before_any_engine(tmp_path, capsys):
    path = frames_tsv(tmp_path / "test.tsv", [("How many owls?", "Seven", "Owl text.")])
    code = eval_main(["--model", str(tmp_path / "no-model"), "--benchmark", "frames", "--data", path])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("golong: error: --judge-model:")


# ----------------------------------------------------------------------------------------------
# Command line: data arguments, the table


def test_data_arguments_for_a_benchmark_and_the_suite(tmp_path):
    assert data_files(["a.json"], "longbench_v2", None) == {"longbench_v2": ["a.json"]}
    assert data_files(["mrcr=m.parquet", "longbench_qa=h.jsonl", "longbench_qa=n.jsonl"], None, "paper") == {
        "mrcr": ["m.parquet"], "longbench_qa": ["h.jsonl", "n.jsonl"]}
    root = tmp_path / "bench"
    (root / "longbench_qa").mkdir(parents=True)
    (root / "docmath").mkdir()
    for name in ("longbench_qa/hotpotqa.jsonl", "longbench_qa/musique.jsonl", "longbench_qa/README.md", "docmath/simplong.json"):
        (root / name).write_text("")
    files = data_files([str(root)], None, "paper")
    assert list(files) == ["docmath", "longbench_qa"]  # Table 5 order
    assert files["longbench_qa"] == [str(root / "longbench_qa/hotpotqa.jsonl"), str(root / "longbench_qa/musique.jsonl")]
    with pytest.raises(UsageError, match="neither NAME=FILE nor a directory"):
        data_files(["plain.json"], None, "paper")
    with pytest.raises(UsageError, match="use one of longbench_v2"):
        data_files(["lbv3=x.json"], None, "paper")
    with pytest.raises(UsageError, match="drop the NAME= prefix"):
        data_files(["mrcr=x.parquet"], "mrcr", None)


def test_suite_table_has_the_paper_columns():
    reports = {"longbench_v2": {"score": 40.0}, "mrcr": {"score": 61.25}}
    table = suite_table("/runs/golong-4b/hf", reports, ("docmath", "longbench_v2", "frames", "mrcr", "corpusqa", "longbench_qa"))
    header, row, note = table.splitlines()
    assert header.split() == ["Model", "Avg.", "DocMath", "LBV2", "Frames", "MRCR", "CorpusQA", "LBV1-QA"]
    assert row.split() == ["hf", "50.6", "-", "40.0", "-", "61.2", "-", "-"]  # Avg. of the two run: 50.625
    assert note == "(Avg. over the 2 of 6 benchmarks run)"


def test_unknown_benchmark_is_one_line_exit_2(tmp_path, capsys):
    code = eval_main(["--model", "m", "--benchmark", "longbench", "--data", "x.json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "use one of longbench_v2, mrcr" in err[0]


# ----------------------------------------------------------------------------------------------
# End to end with the tiny model


@pytest.mark.slow
def run_golong_eval(args: list[str]) -> subprocess.CompletedProcess:
    """`python -m golong eval ARGS` as a user runs it (its own process: vLLM's and golong's console setup
    stay out of pytest's output capture); fails the test with its output on a non-zero exit."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "golong", "eval", *args], capture_output=True, text=True,
                          timeout=900, cwd=repo, env={**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"golong eval failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_eval_longbench_v2_with_the_tiny_model(tiny_model_path, tmp_path):
    """Released LongBench-V2 rows (one longer than the budget, so middle-truncated) -> vLLM -> pred.py's
    extraction -> the report table; every written score is the metric of the written response."""
    long_context = " ".join(f"word{i}" for i in range(3000))
    data = write_json(tmp_path / "data.json", [lbv2_row(0), lbv2_row(1, "C", "hard", "long", context=long_context),
                                              lbv2_row(2, "A", "hard", "medium")])
    out, samples = tmp_path / "report.json", tmp_path / "samples.jsonl"
    proc = run_golong_eval(["--model", tiny_model_path, "--benchmark", "longbench_v2", "--data", data, "--g", "2",
                            "--max-tokens", "8", "--max-prompt-length", "512", "--gpu-memory-utilization", "0.3",
                            "--out", str(out), "--samples-out", str(samples)])
    report = json.loads(out.read_text())
    r = report["benchmarks"]["longbench_v2"]
    assert (r["rows"], r["responses"], r["rows_truncated"], r["rows_skipped_too_long"]) == (3, 6, 1, 0)
    bench = get_benchmark("longbench_v2")
    items = {i.id: i for i in load_items(bench, [data])}
    rows = [json.loads(line) for line in open(samples, encoding="utf-8")]
    assert [row["id"] for row in rows] == ["id0", "id1", "id2"]
    assert [row["truncated"] for row in rows] == [False, True, False] and rows[1]["prompt_tokens"] > 512
    per_row = []
    for row in rows:
        assert len(row["responses"]) == 2
        assert row["scores"] == [bench.score(items[row["id"]], t, None).value for t in row["responses"]]
        per_row.append(sum(row["scores"]) / 2)
    assert r["score"] == pytest.approx(100 * sum(per_row) / 3)
    printed = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(printed) if line.startswith("Model "))
    assert printed[header].split() == ["Model", "Avg.", "LBV2"]
    assert printed[header + 1].split()[2] == f"{r['score']:.1f}"
    assert report["table"].splitlines()[0] == printed[header]


@pytest.mark.slow
def test_suite_paper_from_a_directory_with_a_judge(tiny_model_path, tmp_path):
    """`--suite paper --data DIR`: five benchmarks' released files in DIR/NAME/, one engine, the judge a real
    local server; the MRCR conversation is longer than the budget and is skipped, not cut."""
    root = tmp_path / "bench"
    for name in ("longbench_v2", "mrcr", "longbench_qa", "docmath", "frames"):
        (root / name).mkdir(parents=True)
    write_json(root / "longbench_v2" / "data.json", [lbv2_row(0)])
    long_mrcr = mrcr_row(answer_text=" ".join(f"tapir{i}" for i in range(600)))
    pq.write_table(pa.Table.from_pylist([mrcr_row(), long_mrcr]), root / "mrcr" / "2needle.parquet")
    write_jsonl(root / "longbench_qa" / "hotpotqa.jsonl", [lb_row("hotpotqa", "Where is the tower?", ["Paris"])])
    write_json(root / "docmath" / "simpshort_testmini.json", [
        {"question_id": "s0", "question": "Growth?", "paragraphs": ["From 100 to 112."], "tables": [], "ground_truth": 0.12}])
    frames_tsv(root / "frames" / "test.tsv", [("DOC:f0 How many owls?", "Seven", "Owl article text.")])
    out = tmp_path / "report.json"
    with judge_server({"f0": "Decision: TRUE"}) as server:
        proc = run_golong_eval(["--model", tiny_model_path, "--suite", "paper", "--data", str(root), "--g", "2",
                                "--max-tokens", "6", "--max-prompt-length", "512", "--gpu-memory-utilization", "0.3",
                                "--judge-model", "judge", "--judge-endpoint", server.url, "--judge-max-retries", "0",
                                "--out", str(out)])
    report = json.loads(out.read_text())
    b = report["benchmarks"]
    assert list(b) == ["docmath", "longbench_v2", "frames", "mrcr", "longbench_qa"]  # Table 5 order
    assert (b["mrcr"]["rows"], b["mrcr"]["rows_skipped_too_long"], b["mrcr"]["rows_truncated"]) == (1, 1, 0)
    assert b["frames"]["score"] == 100.0 and b["frames"]["statuses"] == {"ok": 2}  # the judge said TRUE twice
    assert server.count("f0") == 2
    assert all(b[n]["responses"] == 2 for n in ("docmath", "longbench_v2", "longbench_qa", "mrcr"))
    header, row, note = report["table"].splitlines()
    assert header.split() == ["Model", "Avg.", "DocMath", "LBV2", "Frames", "MRCR", "CorpusQA", "LBV1-QA"]
    assert row.split()[6] == "-" and note == "(Avg. over the 5 of 6 benchmarks run)"
    scores = [b[n]["score"] for n in b]
    assert float(row.split()[1]) == pytest.approx(sum(scores) / 5, abs=0.05)
    assert report["table"] in proc.stdout
