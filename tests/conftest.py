"""Shared fixtures: the tiny model is built once per pytest run; torchrun helpers for multi-rank tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# vLLM on CPU: keep the engine core in-process (weight sync hands it tensors by reference) and its KV cache small.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test sees the environment the session started with: a test that joins a world of one in-process
    (init_world sets RANK/WORLD_SIZE, as DeepSpeed needs) must not make a later config validation believe
    it runs under torchrun with WORLD_SIZE=1."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """A tiny Qwen3 model + tokenizer folder that transformers and vLLM load."""
    from golong.tiny_model import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny") / "model"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(script: str, args: list[str], nproc: int = 2, timeout: float = 600, env: dict | None = None):
    """Run `script` under torchrun with `nproc` CPU ranks; fail the test with its output on error."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", script, *args]
    full_env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)
    if proc.returncode != 0:
        pytest.fail(f"torchrun {script} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc
