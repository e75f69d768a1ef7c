"""Two torchrun nodes on one machine: `golong train` with `--nnodes=2`, one process per node, rendezvous on
127.0.0.1. Each layout of the output folder is killed after its second checkpoint, resumed and exported:

- shared: both nodes write to one output folder (a shared filesystem);
- per-node: each node has its own output folder (no shared disk): every node keeps its own ranks' shards.

The resumed runs must train every step once and draw the batches of an uninterrupted run.
"""
import json
import os
import signal
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from conftest import REPO, free_port

STEPS = 3
OVERRIDES = [
    f"trainer.total_steps={STEPS}", "trainer.save_every=1", "trainer.keep_last=2",
    "data.prompts_per_step=4", "rollout.n=2", "rollout.max_response_length=4",
    "trainer.micro_batch_max_tokens=2048", "reward.num_workers=1", "logging.plot=false",
    "logging.progress_bar=false", "data.max_prompt_length=1024",
]
ENV = {"OMP_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
       "PYTHONPATH": REPO}
NUM_ROWS = 12


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [{"id": f"r{i}", "task": "T1", "context": f"The code word of box {i} is {100 + i}.",
             "question": f"What is the code word of box {i}?", "answer": str(100 + i)} for i in range(NUM_ROWS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def node_commands(model, data, out_dirs, port):
    """One torchrun agent per node; `out_dirs[k]` is node k's output folder."""
    return [[sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
             f"--node_rank={k}", "--master_addr=127.0.0.1", f"--master_port={port}",
             "-m", "golong", "train", "recipes/tiny-cpu.yaml", *OVERRIDES,
             f"model.path={model}", f"data.train_files=[{data}]", f"trainer.output_dir={out_dirs[k]}"]
            for k in range(2)]


def start_nodes(model, data, out_dirs, logs):
    port = free_port()
    return [subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ, **ENV},
                             cwd=REPO, start_new_session=True)
            for cmd, log in zip(node_commands(model, data, out_dirs, port), logs)]


def wait_all(procs, logs, timeout=900):
    deadline = time.time() + timeout
    for proc, log in zip(procs, logs):
        try:
            proc.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for p in procs:
                os.killpg(p.pid, signal.SIGKILL)
            pytest.fail(f"node timed out:\n{open(log).read()[-6000:]}")
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, open(log).read()[-8000:]


def kill_after_checkpoint(procs, markers, logs, timeout=900):
    deadline = time.time() + timeout
    while not all(m.exists() for m in markers) and all(p.poll() is None for p in procs) and time.time() < deadline:
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # every process of the node at once, wherever it is
        p.wait()
    assert all(m.exists() for m in markers), "no second checkpoint:\n" + "\n".join(open(l).read()[-3000:] for l in logs)


def expected_fingerprints(prompts_per_step=4, seed=None):
    """The batches of an uninterrupted run: the sampler's first STEPS batches (no prompt is filtered)."""
    from golong.config import Config
    from golong.data.sampler import PromptSampler

    seed = Config().data.seed if seed is None else seed
    sampler = PromptSampler(NUM_ROWS, prompts_per_step, seed, True)
    return [float(zlib.crc32(np.asarray(sorted(sampler.next_batch()), dtype=np.int64).tobytes()))
            for _ in range(STEPS)]


def metrics_of(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("layout", ["shared", "per-node"])
def test_two_nodes_train_checkpoint_resume_and_export(layout, tiny_model_path, dataset, tmp_path):
    out_dirs = [tmp_path / "run"] * 2 if layout == "shared" else [tmp_path / "node0", tmp_path / "node1"]
    logs = [tmp_path / f"node{k}.log" for k in range(2)]
    markers = {d / "checkpoints" / "step_000002" / "run_state.json" for d in out_dirs}

    kill_after_checkpoint(start_nodes(tiny_model_path, dataset, out_dirs, logs), sorted(markers), logs)
    for d in set(out_dirs):  # each node holds its own rank's ZeRO shard of the checkpoint
        files = os.listdir(d / "checkpoints" / "step_000002")
        assert any(f.startswith("zero_pp_rank_") for f in files), files

    logs = [tmp_path / f"resume{k}.log" for k in range(2)]
    wait_all(start_nodes(tiny_model_path, dataset, out_dirs, logs), logs)
    node0 = out_dirs[0]
    assert "resuming from" in logs[0].read_text()
    records = metrics_of(node0)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # none lost, none repeated
    assert all(r["data/dropped_long_prompts"] == 0 and r["batch/responses"] == 4 * 2 for r in records)
    assert [r["batch/fingerprint"] for r in records] == expected_fingerprints()
    assert (node0 / "hf" / "model.safetensors").stat().st_size > 0  # exported by the first node
    if layout == "per-node":  # rank-0-only files stay on the first node
        assert not (out_dirs[1] / "metrics.jsonl").exists() and not (out_dirs[1] / "hf").exists()


def test_a_node_left_alone_fails_naming_the_rendezvous_address():
    """`make train-4b` on node 0 of 2 with no node 1: torchrun gives up after RDZV_TIMEOUT and golong's hint
    names MASTER_ADDR and MASTER_PORT (the recipe never starts: the rendezvous comes first)."""
    port = free_port()
    proc = subprocess.run(["make", "-s", "-o", "install", "train-4b", "NNODES=2", "NODE_RANK=0", "NPROC_PER_NODE=1",
                           "MASTER_ADDR=127.0.0.1", f"MASTER_PORT={port}", "RDZV_TIMEOUT=5"],
                          capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, **ENV})
    assert proc.returncode != 0
    assert "waiting for clients" in proc.stderr  # torchrun's own words
    assert f"MASTER_ADDR=127.0.0.1 MASTER_PORT={port}" in proc.stderr and "NODE_RANK" in proc.stderr


@pytest.mark.multiproc
@pytest.mark.parametrize("nodes, same_dir, expected", [
    ("0,0", True, "shared"),            # one node
    ("0,1", True, "shared"),            # two nodes, one shared filesystem
    ("0,1", False, "per-node"),         # two nodes, each its own disk
    ("0,0", False, "error: trainer.output_dir="),  # two ranks of one node that do not see the same folder
])
def test_folder_layout(nodes, same_dir, expected, tmp_path):
    from conftest import run_torchrun

    dirs = [tmp_path / "run"] * 2 if same_dir else [tmp_path / "a", tmp_path / "b"]
    out = tmp_path / "result.json"
    run_torchrun(os.path.join(REPO, "tests", "dist", "folder_layout.py"),
                 [nodes, ",".join(map(str, dirs)), str(out)], timeout=120)
    result = json.loads(out.read_text())
    assert result.startswith(expected), result
    if expected.startswith("error"):
        assert "Fix:" in result
    assert not any(d.joinpath(".golong-layout-probe").exists() for d in dirs)  # the probe is removed
