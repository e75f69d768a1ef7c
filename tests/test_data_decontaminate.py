"""13-gram decontamination: tokenization, the n-1 / n boundary, CJK, released records, file handling."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from golong.data.cli import main as data_main
from golong.data.decontaminate import decontaminate, ngram_tokens

WORDS = [f"w{i}" for i in range(40)]  # distinct tokens, so overlaps are exactly what a test builds


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_tokens_lowercase_no_punctuation_cjk_characters():
    assert ngram_tokens("Hello, World! Don't stop.") == ["hello", "world", "dont", "stop"]
    assert ngram_tokens("长上下文，RL训练！") == ["长", "上", "下", "文", "rl", "训", "练"]
    assert ngram_tokens("ＡＢＣ (x+y)=z") == ["abc", "xyz"]  # NFKC full-width; symbols are removed too


def test_exactly_n_shared_tokens_drop_and_n_minus_1_keep(tmp_path):
    bench_q = " ".join(WORDS[:20])
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"question": bench_q}])
    shares_13 = "other words " + " ".join(WORDS[5:18]) + " more"  # w5..w17: 13 consecutive tokens
    shares_12 = "other words " + " ".join(WORDS[5:17]) + " more"  # w5..w16: 12
    gapped = " ".join(WORDS[0:7] + ["x"] + WORDS[7:14])  # 14 shared tokens, but never 13 in a row
    # The same 13 tokens with case and punctuation changes still match.
    styled = "Q: " + ", ".join(w.upper() for w in WORDS[2:15]) + "?"
    rows = [{"id": i, "question": q} for i, q in enumerate([shares_13, shares_12, gapped, styled])]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    result = decontaminate(train, [bench], str(tmp_path / "out.jsonl"), n=13)
    assert result.dropped_row_numbers == [1, 4]
    assert (result.kept_rows, result.dropped_rows) == (2, 2)
    assert [json.loads(line)["id"] for line in open(tmp_path / "out.jsonl")] == [1, 2]


def test_cjk_questions_at_the_boundary(tmp_path):
    bench_q = "在这篇关于长上下文强化学习的论文中作者提出了什么新的优势估计方法"
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"question": bench_q}])
    rows = [{"id": "13", "question": "请问：" + bench_q[3:16] + "吗？"},  # 13 shared characters
            {"id": "12", "question": "请问：" + bench_q[3:15] + "吗？"}]  # 12
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    result = decontaminate(train, [bench], str(tmp_path / "out.jsonl"), n=13)
    assert result.dropped_row_numbers == [1]
    assert json.loads(open(tmp_path / "out.jsonl").read())["id"] == "12"


def test_kept_rows_unchanged_in_order(tmp_path, capsys):
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"question": " ".join(WORDS[:13])}])
    lines = [
        '{"question": "keep  me, as   I am", "extra": [1, 2.50, "\u00fc"]}\n',
        json.dumps({"question": " ".join(WORDS[:13])}) + "\n",
        json.dumps({"question": "prefix " + " ".join(WORDS[:13])}) + "\n",
        "\n",
        '{"question": "also kept", "answer": "ü"}\n',
    ]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(lines), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert data_main(["decontaminate", "--train", str(train), "--bench", bench, "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == lines[0] + lines[4]  # byte for byte, in order
    printed = capsys.readouterr().out
    assert "kept 2, dropped 2" in printed and f"{bench}: 2 rows dropped" in printed


def test_counts_against_each_benchmark_file(tmp_path):
    b1 = write_jsonl(tmp_path / "b1.jsonl", [{"q": " ".join(WORDS[:13])}])
    b2 = write_jsonl(tmp_path / "b2.jsonl", [{"q": " ".join(WORDS[20:33])}, {"q": "short"}])
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"q": " ".join(WORDS[:13])},
        {"q": " ".join(WORDS[:13] + WORDS[20:33])},
        {"q": "x " + " ".join(WORDS[20:33])},
        {"q": " ".join(WORDS[21:34])},  # 12 tokens shared with b2: kept
    ])
    result = decontaminate(train, [b1, b2], str(tmp_path / "out.jsonl"), n=13, field="q")
    assert result.dropped_per_bench == {b1: 2, b2: 2}  # row 2 counts against both files
    assert result.dropped_rows == 3 and result.kept_rows == 1


def test_released_records_use_extra_info_question(tmp_path):
    shared = " ".join(WORDS[:13])
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"question": shared}])
    record = {"data_source": "EM", "prompt": [{"role": "user", "content": "long context ..."}],
              "reward_model": {"ground_truth": {"golden_label": "x"}}, "extra_info": {"question": shared}}
    clean = {**record, "extra_info": {"question": "something else"}}
    train = write_jsonl(tmp_path / "train.jsonl", [record, clean])
    result = decontaminate(train, [bench], str(tmp_path / "out.jsonl"))
    assert result.dropped_row_numbers == [1]


def test_parquet_training_file(tmp_path):
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"question": " ".join(WORDS[:13])}])
    rows = [{"id": 1, "question": " ".join(WORDS[:13]), "answer": ["a"]},
            {"id": 2, "question": "kept", "answer": ["b", "c"]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    decontaminate(str(tmp_path / "train.parquet"), [bench], str(tmp_path / "out.parquet"))
    assert pq.read_table(tmp_path / "out.parquet").to_pylist() == rows[1:]
    with pytest.raises(ValueError, match="must have the training file's type"):
        decontaminate(str(tmp_path / "train.parquet"), [bench], str(tmp_path / "out.jsonl"))


def test_missing_question_names_file_row_and_field(tmp_path, capsys):
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"question": "a b c"}, {"text": "no question"}])
    train = write_jsonl(tmp_path / "train.jsonl", [{"question": "x"}])
    code = data_main(["decontaminate", "--train", train, "--bench", bench, "--out", str(tmp_path / "o.jsonl")])
    assert code == 2  # a user error: one line, exit status 2 (the CLI's one error path)
    assert f"{bench}: row 2: field `question`" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Released benchmark files (golong/benchmarks/ loaders)


def test_benchmark_files_are_read_by_their_loaders(tmp_path, capsys):
    """LongBench-V2's data.json, LongBench's `input` rows, MRCR's parquet conversation and Frames' TSV are
    told apart by their fields; CorpusQA is named. Each compares its loader's question."""
    q = {name: " ".join(f"{name}{i}" for i in range(13)) for name in ("lbv2", "lbqa", "mrcr", "frames", "cqa")}
    lbv2 = tmp_path / "data.json"
    lbv2.write_text(json.dumps([{"_id": "x", "question": q["lbv2"], "choice_A": "a", "choice_B": "b", "choice_C": "c",
                                 "choice_D": "d", "answer": "A", "context": "ctx", "difficulty": "easy", "length": "short"}]))
    lbqa = write_jsonl(tmp_path / "hotpotqa.jsonl", [{"input": q["lbqa"], "context": "passages", "answers": ["a"],
                                                      "dataset": "hotpotqa", "_id": "h"}])
    convo = [{"role": "user", "content": "write a poem"}, {"role": "assistant", "content": "poem"},
             {"role": "user", "content": q["mrcr"]}]
    pq.write_table(pa.Table.from_pylist([{"prompt": json.dumps(convo), "answer": "xxpoem", "random_string_to_prepend": "xx",
                                          "n_needles": 2, "n_chars": 20}]), tmp_path / "2needle.parquet")
    frames = tmp_path / "test.tsv"
    frames.write_text(f"Prompt\tAnswer\twiki_links\n{q['frames']}\tSeven\t[]\n", encoding="utf-8")
    cqa = write_jsonl(tmp_path / "cqa.jsonl", [{"question": q["cqa"], "answer": "a", "documents": ["d1"]}])
    train = write_jsonl(tmp_path / "train.jsonl", [{"id": name, "question": "tell me " + text} for name, text in q.items()]
                        + [{"id": "clean", "question": "nothing shared"}])
    benches = [str(lbv2), lbqa, str(tmp_path / "2needle.parquet"), str(frames), f"corpusqa={cqa}"]
    out = tmp_path / "out.jsonl"
    assert data_main(["decontaminate", "--train", train, "--bench", *benches, "--out", str(out)]) == 0
    assert [json.loads(line)["id"] for line in open(out)] == ["clean"]
    printed = capsys.readouterr().out
    assert "kept 1, dropped 5" in printed and all(f"{b}: 1 rows dropped" in printed for b in benches)


def test_benchmark_context_text_and_explicit_field(tmp_path, capsys):
    shared = " ".join(WORDS[:13])
    bench = write_jsonl(tmp_path / "hotpotqa.jsonl", [{"input": "short question", "context": "intro " + shared,
                                                       "answers": ["a"], "dataset": "hotpotqa"}])
    train = write_jsonl(tmp_path / "train.jsonl", [{"question": shared}])
    out = str(tmp_path / "out.jsonl")
    assert decontaminate(train, [bench], out).dropped_rows == 0  # the question alone: no overlap
    assert decontaminate(train, [bench], out, bench_text="context").dropped_rows == 1
    assert decontaminate(train, [f"longbench_qa={bench}"], out, bench_text="both").dropped_rows == 1
    # An explicit --field reads plain files by it: LongBench rows have no `question`, a clear error.
    code = data_main(["decontaminate", "--train", train, "--bench", bench, "--out", out, "--field", "question"])
    assert code == 2 and "field `question`: missing" in capsys.readouterr().err


def test_unknown_benchmark_name_lists_the_valid_ones(tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", [{"question": "x"}])
    code = data_main(["decontaminate", "--train", train, "--bench", "lbv2=data.json", "--out", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("golong: error: --bench: unknown benchmark 'lbv2'") and "longbench_v2, mrcr" in err[0]
