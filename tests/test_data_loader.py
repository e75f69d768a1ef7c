"""Loading native rows and released GoLongRL records: prompts, routing, and bad rows named by file/row/field."""
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from golong.data.config import DataConfig
from golong.data.instructions import OUTPUT_FORMATS
from golong.data.loader import load_examples
from golong.data.schema import DataError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
NATIVE = os.path.join(FIXTURES, "native.jsonl")
RELEASED = os.path.join(FIXTURES, "released.jsonl")


def rows_of(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return str(path)


def test_native_rows_become_one_user_turn_with_the_format_instruction():
    data = load_examples([NATIVE], DataConfig())
    assert data.formats == {NATIVE: "native"} and data.num_bad_rows_skipped == 0
    assert [e.task for e in data.examples] == [f"T{i}" for i in range(1, 10)]
    assert [e.reward_type for e in data.examples] == ["em", "accuracy", "f1", "math_verify", "iou", "subem", "ndcg",
                                                      "pairwise", "rouge_l"]
    first, cjk = data.examples[0], data.examples[1]
    assert first.messages == [{"role": "user", "content":
                               "The archive lists many cities. The capital of Freedonia is Fredville. Other towns follow."
                               "\n\nWhat is the capital of Freedonia?\n\n" + OUTPUT_FORMATS["em"]}]
    assert (first.id, first.ground_truth, first.source, first.row) == ("n1", "Fredville", "unit", 1)
    assert cjk.messages[0]["content"].startswith("长上下文文档：小明在北京工作了三年，后来搬到上海。\n\n小明后来搬到了哪里？")
    assert OUTPUT_FORMATS["accuracy"] in cjk.messages[0]["content"]
    assert cjk.source == "native.jsonl"  # no `source`: the file name
    assert data.examples[6].id == "7"  # integer ids become strings
    assert data.examples[4].ground_truth == {"columns": ["name"], "data": [["bob"]]}
    assert all(OUTPUT_FORMATS[e.reward_type] in e.messages[0]["content"] for e in data.examples)


def test_every_instruction_asks_for_the_answer_marker_or_answer_tags():
    for reward_type, text in OUTPUT_FORMATS.items():
        assert ('"[Answer]"' in text) or (reward_type == "iou" and "<answer>" in text)


def test_released_records_load_as_they_are_and_route_by_data_source():
    data = load_examples([RELEASED], DataConfig())
    records = rows_of(RELEASED)
    assert data.formats == {RELEASED: "released"}
    got = [(e.id, e.source, e.reward_type, e.task) for e in data.examples]
    assert got == [("0", "EM", "em", "T1"), ("1", "selection", "accuracy", "T2"),
                   ("2", "longbench_pro", "pairwise", "T8"), ("3", "longbench_pro", "ndcg", "T7"),
                   ("4", "longbench_pro", "rouge_l", "T9"), ("5", "multitableqa_pretraining", "iou", "T5"),
                   ("6", "math_longcot_math_verify", "math_verify", "T4"), ("7", "longbench_pro", "f1", "T3")]
    assert [e.messages for e in data.examples] == [r["prompt"] for r in records]  # the prompt, unchanged
    assert data.examples[2].ground_truth == ["Part 2", "Part 1", "Part 3"]  # longbench_pro: doc_ids
    assert data.examples[4].ground_truth == ["文章介绍了九种任务。"]
    assert data.examples[0].ground_truth == "Fredville"  # golden_label


def test_released_parquet_equals_released_jsonl(tmp_path):
    parquet = str(tmp_path / "released.parquet")
    pq.write_table(pa.Table.from_pylist(rows_of(RELEASED)), parquet)  # nested structs, as verl stores them
    from_jsonl = load_examples([RELEASED], DataConfig()).examples
    from_parquet = load_examples([parquet], DataConfig()).examples
    strip = lambda e: (e.id, e.task, e.reward_type, e.ground_truth, e.messages, e.source, e.row)  # noqa: E731
    assert [strip(e) for e in from_parquet] == [strip(e) for e in from_jsonl]


def test_native_and_released_files_together_and_format_forced(tmp_path):
    data = load_examples([NATIVE, RELEASED], DataConfig())
    assert data.formats == {NATIVE: "native", RELEASED: "released"}
    assert len(data.examples) == 17
    assert data.task_counts() == {"T1": 2, "T2": 2, "T3": 2, "T4": 2, "T5": 2, "T6": 1, "T7": 2, "T8": 2, "T9": 2}
    with pytest.raises(DataError, match=r"released.jsonl: row 1: field `id`: missing"):
        load_examples([RELEASED], DataConfig(format="native"))


GOOD = {"id": "x", "task": "T1", "context": "c", "question": "q", "answer": "a"}


@pytest.mark.parametrize("row, field, reason", [
    ({k: v for k, v in GOOD.items() if k != "question"}, "question", "missing"),
    ({**GOOD, "context": 42}, "context", "expected a string, got number"),
    ({**GOOD, "task": "T10"}, "task", "unknown task 'T10'; valid tasks: T1, T2, T3, T4, T5, T6, T7, T8, T9"),
    ({**GOOD, "reward_type": "bleu"}, "reward_type", "unknown reward type 'bleu'; known reward types: em, accuracy"),
    ({**GOOD, "task": "T7", "answer": "ID1"}, "answer", "a `ndcg` answer must be list, got str"),
    ({**GOOD, "task": "T8", "answer": ["a", 3]}, "answer", "must be a non-empty list of strings"),
    ({**GOOD, "task": "T5", "answer": {"rows": []}}, "answer", 'an iou answer must be {"columns"'),
    ({**GOOD, "id": None}, "id", "missing"),
    ({**GOOD, "id": 1.5}, "id", "expected a string or an integer"),
    ({"data_source": "EM", "prompt": "just text", "reward_model": {"ground_truth": {"golden_label": "a"}}},
     "prompt", "expected a non-empty list of chat turns"),
    ({"data_source": "EM", "prompt": [{"role": "user"}], "reward_model": {"ground_truth": {}}},
     "prompt[0]", 'expected {"role": str, "content": str}'),
    ({"data_source": "EM", "prompt": [{"role": "user", "content": "c"}], "reward_model": {}},
     "reward_model.ground_truth", "missing"),
    ({"data_source": "wikipedia", "prompt": [{"role": "user", "content": "c"}],
      "reward_model": {"ground_truth": {"golden_label": "a"}}},
     "data_source/extra_info.reward_mode/reward_model", "unknown data_source 'wikipedia'; known data sources: EM"),
    ({"data_source": "longbench_pro", "prompt": [{"role": "user", "content": "c"}],
      "reward_model": {"ground_truth": {"doc_ids": ["a"]}}, "extra_info": {"reward_mode": "T99 Nothing"}},
     "data_source/extra_info.reward_mode/reward_model", "unknown extra_info.reward_mode 'T99 Nothing'"),
])
def test_bad_row_names_file_row_and_field(tmp_path, row, field, reason):
    path = write_jsonl(tmp_path / "bad.jsonl", [row])  # the first row tells the format
    with pytest.raises(DataError) as info:
        load_examples([path], DataConfig())
    err = info.value
    assert (err.file, err.row, err.field) == (path, 1, field)
    assert str(err).startswith(f"{path}: row 1: field `{field}`: ")
    assert reason in str(err)


def test_skip_counts_bad_rows_and_numbers_them_by_line(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        GOOD,
        "",  # blank lines are skipped but keep line numbers true to the file
        {**GOOD, "id": "y", "task": "T0"},
        "{not json",
        {**GOOD, "id": "z"},
        "[1, 2]",
    ])
    with pytest.raises(DataError, match=r"mixed.jsonl: row 3: field `task`"):
        load_examples([path], DataConfig())
    data = load_examples([path], DataConfig(on_bad_row="skip"))
    assert [e.id for e in data.examples] == ["x", "z"] and [e.row for e in data.examples] == [1, 5]
    assert data.num_bad_rows_skipped == 3
    assert [(e.row, e.field) for e in data.bad_rows] == [(3, "task"), (4, "(row)"), (6, "(row)")]
    assert "not valid JSON" in str(data.bad_rows[1]) and "expected a JSON object, got list" in str(data.bad_rows[2])


def test_file_problems(tmp_path):
    with pytest.raises(DataError, match="no dataset files given"):
        load_examples([], DataConfig())
    with pytest.raises(DataError, match="missing.jsonl: row 0: field `\\(file\\)`: file not found"):
        load_examples([str(tmp_path / "missing.jsonl")], DataConfig())
    (tmp_path / "rows.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown file type; use .jsonl or .parquet"):
        load_examples([str(tmp_path / "rows.csv")], DataConfig())
    only_bad = write_jsonl(tmp_path / "only_bad.jsonl", [{"id": 1}])
    with pytest.raises(DataError, match=r"no usable rows \(1 bad rows skipped\)"):
        load_examples([only_bad], DataConfig(on_bad_row="skip"))
