"""`golong data synthesize` / `verify` against a real OpenAI-compatible HTTP server on 127.0.0.1 (started
here, scripted replies) and, in the slow test, against a real `vllm serve` of the tiny model."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from golong.data import cli
from golong.data.synth_jobs import LengthBin, ResumableOutput, model_for, parse_bins
from golong.data.synthesize import (
    SUBTASKS,
    generation_prompt,
    ideal_response,
    load_subtask,
    parse_reply,
    read_prompt,
)
from golong.data.verify import parse_verdict
from golong.rewards import TASK_TO_REWARD, compute_score

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------
# A scripted OpenAI-compatible chat-completions server


def completion(text: str, finish_reason: str = "stop") -> dict:
    return {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": "scripted",
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}


class ScriptedServer:
    """POST /v1/chat/completions. A generation prompt is routed by the `DOC:name` in its document, a
    verification prompt by the `ROUTE:name` in its question; `script[name]` is a list of steps used in
    turn (the last one repeats): ("reply", text), ("status", code) or ("sleep", seconds, text)."""

    def __init__(self, delay: float = 0.0):
        self.script: dict[str, list[tuple]] = {}
        self.requests: list[tuple[str, str, str]] = []  # (kind, name, model)
        self.prompts: dict[str, str] = {}
        self.delay = delay
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                step, name = server.next_step(self.path, body)
                if step[0] == "status":
                    self._send(step[1], {"error": {"message": f"scripted {step[1]}", "type": "server_error"}},
                               {"retry-after-ms": "10"})
                    return
                if step[0] == "sleep":
                    time.sleep(step[1])
                time.sleep(server.delay)
                self._send(200, completion(step[-1]))

            def _send(self, code, obj, headers=None):
                data = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def next_step(self, path: str, body: dict):
        assert path == "/v1/chat/completions", path
        prompt = body["messages"][-1]["content"]
        kind = "verify" if "rigorous quality assessor" in prompt else "generate"
        m = re.search(r"ROUTE:([\w-]+)" if kind == "verify" else r"DOC:([\w-]+)", prompt)
        name = m[1] if m else "?"
        with self._lock:
            self.requests.append((kind, name, body["model"]))
            self.prompts[f"{kind}:{name}"] = prompt
            steps = self.script.get(name, [("reply", "no script")])
            step = steps.pop(0) if len(steps) > 1 else steps[0]
        return step, name

    def count(self, name: str) -> int:
        return sum(1 for _, n, _ in self.requests if n == name)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with ScriptedServer() as s:
        yield s


def mc_reply(tag: str, answers=("B", "(C)", "D. the owl")) -> str:
    """A well-formed T2 reply: three multiple-choice questions with answers in three spellings."""
    options = {"A": "the fox", "B": "the cat", "C": "the dog", "D": "the owl"}
    questions = [{"question": f"ROUTE:{tag}-{k} Which animal is mentioned in part {k}?", "options": options,
                  "answer": a, "rationale": "tests evidence integration", "solution": f"part {k} names it"}
                 for k, a in enumerate(answers, start=1)]
    return "<think>plan the three questions</think>```json\n" + json.dumps(
        {"language": "English", "questions": questions}) + "\n```"


MIXED_REPLY = json.dumps({"language": "English", "questions": [
    {"question": "ROUTE:m-1 Good one?", "options": ["A. yes", "B. no", "C. maybe", "D. never"], "answer": "A",
     "rationale": "r", "solution": "s"},
    {"question": "ROUTE:m-2 Three options only?", "options": {"A": "x", "B": "y", "C": "z"}, "answer": "A"},
    {"question": "ROUTE:m-3 Letter not an option?", "options": {"A": "w", "B": "x", "C": "y", "D": "z"},
     "answer": "E"},
]})


def write_docs(path, names, words: int = 20) -> str:
    with open(path, "w") as f:
        for name in names:
            text = f"DOC:{name} " + " ".join(["The fox is blue and the owl is red."] * max(1, words // 9))
            f.write(json.dumps({"id": name, "text": text, "source": "unit-test"}) + "\n")
    return str(path)


def read_jsonl(path) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def synth_args(server, docs, out, *extra) -> list[str]:
    return ["synthesize", "--docs", docs, "--out", str(out), "--subtask", "T2-a", "--endpoint", server.url,
            "--model", "gen-model", "--no-progress", "--max-retries", "3", *extra]


# ----------------------------------------------------------------------------------------------
# Prompts


def test_every_packaged_prompt_loads_and_cites_its_appendix_section():
    for name in SUBTASKS:
        sub = load_subtask(name, None, None)
        raw = (open(os.path.join(REPO, "golong/data/synth_prompts", f"{name}.txt")).read())
        assert raw.startswith("# Paper appendix B."), name
        assert sub.task == name.split("-")[0] and sub.primary and "Context Requirement" in sub.secondary
        assert "[Answer]" in sub.instruction or "<answer>" in sub.instruction, name
        assert not sub.instruction.rstrip().endswith("[Answer]")  # the example answer is cut off
    for shared in ("B1_shared_instruction", "B2_verify"):
        text, _ = read_prompt(shared)
        assert not text.startswith("#")
    assert load_subtask("T2-c", None, None).instruction == (
        'Output the "[Answer]" identifier first, then output A/B/C/D/E, without any additional content.')


def test_generation_prompt_wraps_the_subtask_in_b1_and_leaves_document_braces_alone():
    sub = load_subtask("T3-a", None, None)
    shared, _ = read_prompt("B1_shared_instruction")
    reply_format, _ = read_prompt("reply_format_generate")
    document = 'Part 1 says {Primary_Task} and {"json": 1}.'
    prompt = generation_prompt(document, sub, "f1", shared, reply_format)
    assert "create three questions" in prompt and f"[Long Context]: {document}\n" in prompt
    assert "[Primary Task]: Attribution and Citation Alignment" in prompt
    assert "[Secondary Task]: Full-Sentence Citation Alignment" in prompt
    assert "one per answer line" in prompt  # the f1 answer form
    assert not re.search(r"\{(Long_Context|Secondary_Task|Reply_Format|Answer_Form)\}", prompt)


def test_subtask_choice_errors_name_the_flag():
    with pytest.raises(ValueError, match="--subtask: task T2 has several prompts; choose one of T2-a, T2-b"):
        load_subtask(None, "T2", None)
    with pytest.raises(ValueError, match="--subtask: unknown subtask 'T2-z'"):
        load_subtask("T2-z", None, None)
    assert load_subtask(None, "T5", None).name == "T5"
    with pytest.raises(ValueError, match="give --subtask"):
        load_subtask(None, None, None)
    with pytest.raises(ValueError, match="prompt file nowhere/mine.txt not found"):
        load_subtask(None, "T2", "nowhere/mine.txt")


def test_user_prompt_file_is_used_and_checked(tmp_path):
    good = tmp_path / "mine.txt"
    good.write_text("# my header\nPrimary Task: Legal QA\nAnswer.\n\nSecondary Task: Clause lookup\n"
                    "Output format:\nOutput the \"[Answer]\" identifier first, then the letter.\n\n[Answer]\nB\n")
    sub = load_subtask(None, "T2", str(good))
    assert (sub.name, sub.task, sub.primary) == ("mine", "T2", "Legal QA\nAnswer.")
    assert sub.instruction == 'Output the "[Answer]" identifier first, then the letter.'
    bad = tmp_path / "bad.txt"
    bad.write_text("Just write questions.\n")
    with pytest.raises(ValueError, match="needs a 'Primary Task:' and then a 'Secondary Task:'"):
        load_subtask(None, "T2", str(bad))


# ----------------------------------------------------------------------------------------------
# Parsing: every reward's answer shape


@pytest.mark.parametrize("subtask,answer,expected", [
    ("T1", "Paris", "Paris"),
    ("T3-a", "Part 1\nPart 12", ["Part 1", "Part 12"]),
    ("T4-b", 12.5, "12.5"),
    ("T4-b", ["5.5%", "-2.2%"], ["5.5%", "-2.2%"]),
    ("T5", {"columns": ["name", "n"], "data": [{"name": "a", "n": 1}, {"name": "b", "n": 2}]},
     {"columns": ["name", "n"], "data": [["a", 1], ["b", 2]]}),
    ("T5", '{"columns": ["x"], "data": [["1"]]}', {"columns": ["x"], "data": [["1"]]}),
    ("T6-a", ["Cluster_A 25.00%", "Cluster_B 75.00%"], ["Cluster_A 25.00%", "Cluster_B 75.00%"]),
    ("T7-a", ["ID3", "ID1"], ["ID3", "ID1"]),
    ("T8-b", "A\nC\nB", ["A", "C", "B"]),
    ("T9-a", "A short summary of the book.", "A short summary of the book."),
])
def test_answers_become_their_rewards_format_and_score_one(tmp_path, subtask, answer, expected):
    from golong.data.schema import example_from_native

    sub = load_subtask(subtask, None, None)
    reward_type = TASK_TO_REWARD[sub.task]
    reply = json.dumps({"questions": [{"question": "Q?", "answer": answer, "rationale": "r", "solution": "s"}]})
    doc = {"id": "d1", "text": "the document", "source": "src"}
    rows, rejects, counts = parse_reply(reply, doc, sub, reward_type, "m", str(tmp_path / "qa.jsonl"))
    assert rejects == [] and counts["parsed"] == 1 and counts["replies_wrong_count"] == 1
    row = rows[0]
    assert row["answer"] == expected and row["reward_type"] == reward_type and row["context"] == "the document"
    example = example_from_native(row, "qa.jsonl", 1)
    assert compute_score(reward_type, ideal_response(reward_type, row["answer"]), example.ground_truth) == 1.0
    assert compute_score(reward_type, "[Answer]\nsomething else entirely", example.ground_truth) < 1.0


@pytest.mark.parametrize("question,reason", [
    ({"question": "Q?", "answer": "B", "options": {"A": "a", "B": "b", "C": "c"}}, "at least 4 options"),
    ({"question": "Q?", "answer": "E", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}}, "names none of the options"),
    ({"question": "Q?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}}, 'missing "answer"'),
    ({"answer": "A", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}}, 'missing "question"'),
    ({"question": "Q?", "answer": "A"}, 'needs "options"'),
    ("just a string", "must be a JSON object"),
])
def test_malformed_multiple_choice_questions_are_rejected_with_the_reason(tmp_path, question, reason):
    sub = load_subtask("T2-b", None, None)
    doc = {"id": "d1", "text": "doc", "source": "s"}
    rows, rejects, counts = parse_reply(json.dumps({"questions": [question]}), doc, sub, "accuracy", "m", "qa.jsonl")
    assert rows == [] and counts["malformed"] == 1 and reason in rejects[0]["reason"]
    assert rejects[0]["generated"] == question and rejects[0]["doc_id"] == "d1"


def test_unparseable_replies_are_rejected_whole():
    sub = load_subtask("T2-b", None, None)
    doc = {"id": "d1", "text": "doc", "source": "s"}
    for text, reason in [("I cannot do that.", "holds no JSON object"),
                         ('{"questions": [1, 2,}', "does not parse"),
                         ('{"items": []}', 'no "questions" list')]:
        rows, rejects, counts = parse_reply(text, doc, sub, "accuracy", "m", "qa.jsonl")
        assert rows == [] and counts["replies_unparseable"] == 1 and reason in rejects[0]["reason"]
        assert rejects[0]["reply"] == text


def test_iou_answer_that_is_not_a_table_is_rejected():
    sub = load_subtask("T5", None, None)
    doc = {"id": "d1", "text": "doc", "source": "s"}
    rows, rejects, _ = parse_reply(json.dumps({"questions": [{"question": "Q", "answer": "12 rows"}]}),
                                   doc, sub, "iou", "m", "qa.jsonl")
    assert rows == [] and "iou answer must be" in rejects[0]["reason"]


def test_verdict_parsing():
    v = parse_verdict("<think>hmm PASS?</think>Verdict -- REJECT\nFailed check 2: Distractor Quality -- B is "
                      "also right.\nFailed check 3: Hallucination Detection -- no such person.")
    assert (v.verdict, v.failed_checks) == ("REJECT", ["Distractor Quality", "Hallucination Detection"])
    assert parse_verdict("**Verdict**: PASS").verdict == "PASS"
    assert parse_verdict("Verdict -- REJECT\nThe task compliance check fails.").failed_checks == ["Task Compliance"]
    assert parse_verdict("Verdict -- REJECT").failed_checks == ["unspecified"]
    assert parse_verdict("REJECT. Answer uniqueness: two options fit.").failed_checks == ["Answer Uniqueness"]
    assert parse_verdict("It could PASS or REJECT.").verdict is None
    assert parse_verdict("looks fine to me").verdict is None


def test_bins():
    bins = parse_bins("<=100000:deepseek-v3.2, >100000:gemini-2.5-pro")
    assert bins == [LengthBin("<=", 100000, "deepseek-v3.2"), LengthBin(">", 100000, "gemini-2.5-pro")]
    assert model_for(100000, bins, None) == "deepseek-v3.2" and model_for(100001, bins, None) == "gemini-2.5-pro"
    assert model_for(5, [LengthBin(">", 10, "big")], "fallback") is None  # rules given: no fallback
    assert model_for(5, [], "default") == "default"
    with pytest.raises(ValueError, match="--bins: cannot read '=100:m'"):
        parse_bins("<=10:a,=100:m")


# ----------------------------------------------------------------------------------------------
# Against the scripted HTTP server


def test_synthesize_rows_validate_and_rejects_keep_the_reason(tmp_path, server, capsys):
    server.script = {"good": [("reply", mc_reply("g"))], "mixed": [("reply", MIXED_REPLY)],
                     "prose": [("reply", "Here are three great questions about foxes.")]}
    docs = write_docs(tmp_path / "docs.jsonl", ["good", "mixed", "prose"])
    out = tmp_path / "qa.jsonl"
    assert cli.main(synth_args(server, docs, out)) == 0
    summary = capsys.readouterr().out
    assert "documents: 3 processed this run, 0 already done" in summary
    assert "questions: 6 generated, 4 parsed into rows, 2 malformed; 1 replies unparseable" in summary
    assert "tokens used: 300 prompt + 30 completion = 330" in summary
    rows = read_jsonl(out)
    assert [r["id"] for r in rows if r["doc_id"] == "good"] == ["good-T2-a-q1", "good-T2-a-q2", "good-T2-a-q3"]
    assert [r["answer"] for r in rows if r["doc_id"] == "good"] == ["B", "C", "D"]  # B, (C), "D. the owl"
    good = next(r for r in rows if r["doc_id"] == "good")  # documents finish in any order (8 at once)
    assert good["task"] == "T2" and good["reward_type"] == "accuracy" and good["source"] == "unit-test"
    assert good["context"].startswith("DOC:good ") and good["question"].endswith("\nC. the dog\nD. the owl")
    assert good["instruction"].startswith('Output the "[Answer]" identifier first, then output the answer option')
    assert good["rationale"] == "tests evidence integration" and good["synthesis"]["model"] == "gen-model"
    assert cli.main(["validate", str(out)]) == 0  # golong's own validator accepts every row
    assert "4 valid rows, 0 bad rows; tasks: T2 4" in capsys.readouterr().out
    rejects = read_jsonl(tmp_path / "qa.rejects.jsonl")
    reasons = sorted((r["doc_id"], r["reason"].split(" (")[0][:40]) for r in rejects)
    assert reasons == [("mixed", "a multiple-choice question needs at leas"),
                       ("mixed", "the answer 'E' names none of the options"),
                       ("prose", "the reply holds no JSON object")]
    assert sorted(json.loads(line)["unit"] for line in open(str(out) + ".done")) == ["good", "mixed", "prose"]
    # The reward reads the rows: the right letter scores 1, another 0.
    assert compute_score("accuracy", "[Answer]\nB", good["answer"]) == 1.0
    assert compute_score("accuracy", "[Answer]\nA", good["answer"]) == 0.0


def test_429_500_and_timeouts_are_retried(tmp_path, server, capsys):
    server.script = {"rate": [("status", 429), ("reply", mc_reply("r"))],
                     "boom": [("status", 500), ("status", 503), ("reply", mc_reply("b"))],
                     "slow": [("sleep", 3.0, mc_reply("s")), ("reply", mc_reply("s"))]}
    docs = write_docs(tmp_path / "docs.jsonl", ["rate", "boom", "slow"])
    out = tmp_path / "qa.jsonl"
    assert cli.main(synth_args(server, docs, out, "--timeout", "1")) == 0
    summary = capsys.readouterr().out
    assert (server.count("rate"), server.count("boom"), server.count("slow")) == (2, 3, 2)
    assert "requests: 3 answered, 0 failed after retries" in summary
    assert "error responses (408, 409, 429 and 5xx are retried while retries are left): HTTP 429 x1, HTTP 500 x1, HTTP 503 x1" in summary
    assert Counter(r["doc_id"] for r in read_jsonl(out)) == {"rate": 3, "boom": 3, "slow": 3}


def test_a_request_failing_after_its_retries_is_recorded_and_retried_by_a_rerun(tmp_path, server, capsys):
    server.script = {"ok": [("reply", mc_reply("o"))], "down": [("status", 500), ("status", 500), ("reply", mc_reply("d"))]}
    docs = write_docs(tmp_path / "docs.jsonl", ["ok", "down"])
    out = tmp_path / "qa.jsonl"
    assert cli.main(synth_args(server, docs, out)[:-2] + ["--max-retries", "1"]) == 0
    assert "requests: 1 answered, 1 failed after retries" in capsys.readouterr().out
    assert server.count("down") == 2  # the first try and one retry
    failed = read_jsonl(tmp_path / "qa.rejects.jsonl")
    assert [(r["doc_id"], r["stage"]) for r in failed] == [("down", "request")]
    assert "request failed after 1 retries (HTTP 500)" in failed[0]["reason"]
    assert cli.main(synth_args(server, docs, out)) == 0  # the re-run retries only the failed document
    assert "documents: 1 processed this run, 1 already done" in capsys.readouterr().out
    assert server.count("ok") == 1 and server.count("down") == 3
    assert Counter(r["doc_id"] for r in read_jsonl(out)) == {"ok": 3, "down": 3}
    assert read_jsonl(tmp_path / "qa.rejects.jsonl") == []  # the stale failure line is gone


def test_resume_drops_lines_of_unfinished_units(tmp_path):
    out, rejects = str(tmp_path / "qa.jsonl"), str(tmp_path / "qa.rejects.jsonl")
    with open(out, "w") as f:
        f.write('{"id": "a-q1", "doc_id": "a"}\n{"id": "b-q1", "doc_id": "b"}\n{"id": "b-q2", "doc')  # cut by a kill
    with open(rejects, "w") as f:
        f.write('{"doc_id": "a", "reason": "x"}\n{"doc_id": "b", "reason": "y"}\n')
    with open(out + ".done", "w") as f:
        f.write('{"unit": "a", "generated": 3}\n{"unit": "b"')  # b's ledger line was cut too
    output = ResumableOutput(out, rejects, key="doc_id")
    assert output.done == {"a"} and output.lines_removed == 3
    assert open(out).read() == '{"id": "a-q1", "doc_id": "a"}\n'
    assert open(rejects).read() == '{"doc_id": "a", "reason": "x"}\n'
    assert open(out + ".done").read() == '{"unit": "a", "generated": 3}\n'
    with pytest.raises(ValueError, match="--out .*qa.parquet: must be a .jsonl file"):
        ResumableOutput(str(tmp_path / "qa.parquet"), rejects, key="doc_id")


def test_an_output_is_resumed_only_by_the_same_subtask(tmp_path, server, capsys):
    server.script = {"a": [("reply", mc_reply("a"))]}
    docs = write_docs(tmp_path / "docs.jsonl", ["a"])
    out = tmp_path / "qa.jsonl"
    assert cli.main(synth_args(server, docs, out)) == 0
    assert json.loads(open(str(out) + ".done").readline())["subtask"] == "T2-a"
    other = synth_args(server, docs, out)
    other[other.index("T2-a")] = "T2-b"
    assert cli.main(other) == 2
    assert "was written with subtask 'T2-a', not 'T2-b'; give this run its own --out" in capsys.readouterr().err
    assert len(server.requests) == 1


def test_killed_run_resumes_without_duplicates(tmp_path):
    names = [f"d{i}" for i in range(8)]
    with ScriptedServer(delay=0.4) as server:
        server.script = {n: [("reply", mc_reply(n))] for n in names}
        docs = write_docs(tmp_path / "docs.jsonl", names)
        out = tmp_path / "qa.jsonl"
        env = {**os.environ, "PYTHONPATH": REPO}
        proc = subprocess.Popen([sys.executable, "-m", "golong.data.cli",
                                 *synth_args(server, docs, out, "--concurrency", "1")],
                                env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ledger = str(out) + ".done"
        deadline = time.time() + 120
        while time.time() < deadline and len(read_jsonl(ledger)) < 3 and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = {r["unit"] for r in read_jsonl(ledger)}
        assert 3 <= len(done_before) < 8, "the run should have been killed mid-way"
        requests_before = len(server.requests)
        assert cli.main(synth_args(server, docs, out)) == 0
        rows = read_jsonl(out)
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)) == 24 and Counter(r["doc_id"] for r in rows) == {n: 3 for n in names}
        assert sorted(r["unit"] for r in read_jsonl(ledger)) == names
        # Documents done before the kill were not asked again; at most the one in flight was.
        assert all(server.count(n) == 1 for n in done_before)
        assert len(server.requests) - requests_before == 8 - len(done_before)
        assert requests_before <= len(done_before) + 1


def test_bins_route_by_length_and_leave_uncovered_documents_for_another_run(tmp_path, server, capsys):
    server.script = {"short": [("reply", mc_reply("s"))], "long": [("reply", mc_reply("l"))]}
    docs = str(tmp_path / "docs.jsonl")
    with open(docs, "w") as f:
        f.write(json.dumps({"id": "short", "text": "DOC:short " + "word " * 10}) + "\n")
        f.write(json.dumps({"id": "long", "text": "DOC:long " + "word " * 500}) + "\n")
    out = tmp_path / "qa.jsonl"
    base = synth_args(server, docs, out)
    base = base[:base.index("--model")] + base[base.index("--model") + 2:]
    assert cli.main(base + ["--bins", "<=100:small-model"]) == 0
    assert "documents outside every --bins rule (left for another run): 1" in capsys.readouterr().out
    assert cli.main(base + ["--bins", "<=100:small-model,>100:big-model"]) == 0
    assert [(n, m) for _, n, m in server.requests] == [("short", "small-model"), ("long", "big-model")]
    assert {r["doc_id"]: r["synthesis"]["model"] for r in read_jsonl(out)} == {"short": "small-model", "long": "big-model"}


def test_verify_drops_rejected_rows_and_records_the_failed_checks(tmp_path, server, capsys):
    server.script = {"g": [("reply", mc_reply("g"))]}
    docs = write_docs(tmp_path / "docs.jsonl", ["g"])
    qa = tmp_path / "qa.jsonl"
    assert cli.main(synth_args(server, docs, qa)) == 0
    server.script.update({
        "g-1": [("reply", "Verdict -- PASS")],
        "g-2": [("reply", "Verdict -- REJECT\nFailed check 2: Distractor Quality -- C is also supported.\n"
                          "Failed check 3: Hallucination Detection -- part 2 says nothing of dogs.")],
        "g-3": [("reply", "The question seems reasonable overall.")],
    })
    capsys.readouterr()
    out = tmp_path / "verified.jsonl"
    args = ["verify", "--qa", str(qa), "--out", str(out), "--endpoint", server.url, "--model", "judge",
            "--no-progress"]
    assert cli.main(args) == 0
    summary = capsys.readouterr().out
    assert ("verdicts: PASS 1, REJECT 1 (failed checks: Distractor Quality 1, Hallucination Detection 1), "
            "no readable verdict 1") in summary
    kept = read_jsonl(out)
    assert [r["id"] for r in kept] == ["g-T2-a-q1"] and kept[0]["verification"] == {"verdict": "PASS", "model": "judge"}
    assert cli.main(["validate", str(out)]) == 0
    rejects = {r["id"]: r for r in read_jsonl(tmp_path / "verified.rejects.jsonl")}
    assert rejects["g-T2-a-q2"]["failed_checks"] == ["Distractor Quality", "Hallucination Detection"]
    assert "C is also supported" in rejects["g-T2-a-q2"]["reply"] and "context" not in rejects["g-T2-a-q2"]
    assert rejects["g-T2-a-q3"]["verdict"] is None and "no verdict" in rejects["g-T2-a-q3"]["reason"]
    prompt = server.prompts["verify:g-1"]  # B.2 filled with the row
    assert "[Source Document]: DOC:g " in prompt and "[Correct Answer]: B. the cat" in prompt
    assert "[Options]: A. the fox\nB. the cat\nC. the dog\nD. the owl" in prompt
    assert "[Question]: ROUTE:g-1 Which animal is mentioned in part 1?\n" in prompt
    # Re-running asks nothing again.
    n = len(server.requests)
    assert cli.main(args) == 0 and len(server.requests) == n
    assert "rows: 0 processed this run, 3 already done" in capsys.readouterr().out


def test_limit_makes_a_trial_run_that_a_full_run_continues(tmp_path, server, capsys):
    names = ["a", "b", "c"]
    server.script = {n: [("reply", mc_reply(n))] for n in names}
    docs = write_docs(tmp_path / "docs.jsonl", names)
    out = tmp_path / "qa.jsonl"
    assert cli.main(synth_args(server, docs, out, "--limit", "1", "--concurrency", "1")) == 0
    assert len(server.requests) == 1 and len(read_jsonl(str(out) + ".done")) == 1
    assert cli.main(synth_args(server, docs, out)) == 0
    assert "documents: 2 processed this run, 1 already done" in capsys.readouterr().out
    assert sorted(n for _, n, _ in server.requests) == names and len(read_jsonl(out)) == 9


def test_a_bad_document_stops_the_run_before_any_request(tmp_path, server, capsys):
    docs = write_docs(tmp_path / "docs.jsonl", ["a", "b"])
    with open(docs, "a") as f:
        f.write(json.dumps({"id": "c", "body": "no text field"}) + "\n")
    assert cli.main(synth_args(server, docs, tmp_path / "qa.jsonl")) == 2
    assert "docs.jsonl: row 3: field `text`: missing or empty document text" in capsys.readouterr().err
    with open(docs, "a") as f:
        f.write(json.dumps({"id": "a", "text": "again"}) + "\n")
    assert cli.main(synth_args(server, docs, tmp_path / "qa.jsonl", "--text-field", "body")) == 2
    assert "row 1: field `body`: missing" in capsys.readouterr().err
    assert server.requests == []
    twice = write_docs(tmp_path / "twice.jsonl", ["a", "b", "a"])
    assert cli.main(synth_args(server, twice, tmp_path / "qa.jsonl")) == 2
    assert "row 3: field `id`: repeats 'a'; document ids must be unique" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, server, capsys):
    docs = write_docs(tmp_path / "docs.jsonl", ["x"])
    assert cli.main(["synthesize", "--docs", docs, "--out", str(tmp_path / "o.jsonl"), "--task", "T3"]) == 2
    assert "--subtask: task T3 has several prompts" in capsys.readouterr().err
    assert cli.main(["synthesize", "--docs", docs, "--out", str(tmp_path / "o.jsonl"), "--subtask", "T3-a"]) == 2
    assert "give --model NAME, or --bins" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# A real vLLM OpenAI-compatible server


@pytest.mark.slow
def test_against_a_real_vllm_server(tmp_path, tiny_model_path, capsys):
    import urllib.request

    from tests.conftest import free_port

    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2", "PYTHONPATH": REPO}
    log = open(tmp_path / "vllm.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model_path,
         "--served-model-name", "tiny", "--dtype", "bfloat16", "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", "8192", "--max-num-seqs", "2", "--disable-log-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while True:
            assert proc.poll() is None, open(tmp_path / "vllm.log").read()[-4000:]
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "vllm serve did not become healthy in 600 s"
            time.sleep(2)
        docs = write_docs(tmp_path / "docs.jsonl", ["v1", "v2"], words=30)
        out = tmp_path / "qa.jsonl"
        assert cli.main(["synthesize", "--docs", docs, "--out", str(out), "--subtask", "T2-a",
                         "--endpoint", f"http://127.0.0.1:{port}/v1", "--model", "tiny", "--max-tokens", "16",
                         "--temperature", "0", "--no-progress", "--max-retries", "1"]) == 0
        summary = capsys.readouterr().out
        print(summary)
        assert "requests: 2 answered, 0 failed after retries" in summary
        assert "questions: 0 generated, 0 parsed into rows" in summary and "2 replies unparseable" in summary
        assert "2 cut at --max-tokens" in summary
        prompt_tokens = int(re.search(r"tokens used: (\d+) prompt \+ 32 completion", summary)[1])
        assert prompt_tokens > 1000  # the B.1 instruction and the document were sent and counted
        assert read_jsonl(out) == []
        rejects = read_jsonl(tmp_path / "qa.rejects.jsonl")
        assert sorted(r["doc_id"] for r in rejects) == ["v1", "v2"] and all(r["stage"] == "reply" for r in rejects)
        assert all("cut at --max-tokens 16" in r["reason"] for r in rejects)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
