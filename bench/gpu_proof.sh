#!/usr/bin/env bash
# One call on the GPU machine (no network; torch, transformers and Triton installed; no DeepSpeed or vLLM):
# install the carried wheels offline, record the machine, run bench/gpu_proof.py into $OUT.
#
# Prepare the wheels here first (they travel as an ignored path: run(..., carry=["bench/wheels"])):
#   .venv/bin/pip wheel deepspeed==0.19.8 --no-deps -w bench/wheels
#   .venv/bin/pip download hjson py-cpuinfo msgpack einops ninja --no-deps --only-binary=:all: -d bench/wheels
# (DeepSpeed's other requirements, numpy packaging psutil pydantic tqdm, usually come with torch/transformers;
# the pip log in $OUT says what was missing.) Then, on the GPU machine:
#   bash bench/gpu_proof.sh                      # all sections, ~8 minutes at most
#   bash bench/gpu_proof.sh --sections logprobs  # a subset
set -u
OUT=${OUT:-gpu_proof_out}
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python3 || command -v python)}
if compgen -G "bench/wheels/*.whl" > /dev/null; then
  "$PY" -m pip install --no-index --no-deps --find-links bench/wheels bench/wheels/*.whl > "$OUT/pip.log" 2>&1 \
    || echo "pip install of the carried wheels failed (see $OUT/pip.log)"
  "$PY" -m pip check >> "$OUT/pip.log" 2>&1 || true
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -c "import deepspeed; print('deepspeed', deepspeed.__version__)" > "$OUT/deepspeed_import.txt" 2>&1 || true
exec "$PY" bench/gpu_proof.py --out "$OUT" "$@"
