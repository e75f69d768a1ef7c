# golong: `make demo` and `make test` work from a fresh clone (each installs what it needs first).
SHELL := /bin/bash
BIN := .venv/bin
PYTHON := $(BIN)/python

# torchrun topology, overridable: make train-4b NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1
NNODES ?= 1
NPROC_PER_NODE ?= $(shell n=$$(nvidia-smi -L 2>/dev/null | wc -l); [ "$$n" -gt 0 ] && echo $$n || echo 2)
NODE_RANK ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
# Seconds a node's torchrun waits for the others before giving up (torchrun's own default is 900).
RDZV_TIMEOUT ?= 600
TORCHRUN = $(BIN)/torchrun --nnodes=$(NNODES) --nproc_per_node=$(NPROC_PER_NODE) --node_rank=$(NODE_RANK) \
	--master_addr=$(MASTER_ADDR) --master_port=$(MASTER_PORT) --rdzv-conf=timeout=$(RDZV_TIMEOUT) -m golong
# On failure, say what a rendezvous problem looks like: torchrun's own message names neither address nor port.
RDZV_HINT = { rc=$$?; echo "[golong] torchrun exited with $$rc. If its log says 'waiting for clients' or 'failed to connect': \
node $(NODE_RANK) of $(NNODES) could not meet the others at MASTER_ADDR=$(MASTER_ADDR) MASTER_PORT=$(MASTER_PORT) within \
$(RDZV_TIMEOUT) s. Start every node with the same NNODES, MASTER_ADDR (node 0's address, reachable from all) and \
MASTER_PORT (open on node 0), and a distinct NODE_RANK." >&2; exit $$rc; }
ARGS ?=

# vLLM on CPU: the engine core stays in this process (weight sync hands it tensors by reference) with a
# 1 GiB KV cache; both are ignored on GPU.
export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export VLLM_CPU_KVCACHE_SPACE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-fast selftest demo train-4b train-30b bench lint dry-run clean

install:
	@bash scripts/install.sh

test:
	@bash scripts/install.sh test
	$(PYTHON) -m pytest -q --durations=15 $(ARGS)

test-fast:  ## the suite without the real-engine (slow) tests
	@bash scripts/install.sh test
	$(PYTHON) -m pytest -q -m "not slow" $(ARGS)

selftest: install  ## first run on a new machine or cluster: every path golong trains with, one PASS/FAIL/SKIP line each
	$(PYTHON) -m golong selftest $(ARGS)

# Held-out evaluation of the demo's starting and trained models, sampled as the training rollouts are
# (temperature 1.0, top-p 1.0; golong eval's default is the paper's validation setting, 0.6 and 0.95).
DEMO_EVAL = OMP_NUM_THREADS=1 $(PYTHON) -m golong eval --data runs/demo-assets/eval.jsonl --no-thinking --g 4 \
	--max-tokens 12 --temperature 1.0 --top-p 1.0

demo: install  ## warmed-up tiny model, synthetic multi-task data, TMN-Reweight on 2 CPU ranks, held-out eval; runs/demo/
	OMP_NUM_THREADS=1 $(PYTHON) -m golong prepare-demo runs/demo-assets
	OMP_NUM_THREADS=1 $(BIN)/torchrun --nproc_per_node=2 --master_port=$(MASTER_PORT) -m golong train recipes/tiny-cpu.yaml $(ARGS)
	@echo "== held-out documents (runs/demo-assets/eval.jsonl): the starting model and the trained one, one per core"
	$(DEMO_EVAL) --model runs/demo-assets/model --out runs/demo/eval_start.json > runs/demo/eval_start.log 2>&1 & start=$$!; \
	$(DEMO_EVAL) --model runs/demo/hf --out runs/demo/eval_trained.json > runs/demo/eval_trained.log 2>&1; trained=$$?; \
	wait $$start && [ $$trained -eq 0 ] || { tail -n 20 runs/demo/eval_start.log runs/demo/eval_trained.log; exit 1; }
	$(PYTHON) -m golong.demo compare runs/demo/eval_start.json runs/demo/eval_trained.json --out runs/demo/heldout.md

train-4b: install  ## Qwen3-4B with TMN-Reweight (RECIPE=recipes/qwen3-4b-grpo.yaml for plain GRPO)
	$(TORCHRUN) train $(or $(RECIPE),recipes/qwen3-4b-tmn-reweight.yaml) $(ARGS) || $(RDZV_HINT)

train-30b: install  ## Qwen3-30B-A3B with GRPO (RECIPE=recipes/qwen3-30b-a3b-tmn-reweight.yaml for TMN-Reweight)
	$(TORCHRUN) train $(or $(RECIPE),recipes/qwen3-30b-a3b-grpo.yaml) $(ARGS) || $(RDZV_HINT)

dry-run: install  ## resolve and validate every recipe
	for r in recipes/*.yaml; do $(PYTHON) -m golong train $$r --dry-run > /dev/null && echo "ok $$r"; done

bench: install
	for b in bench/*.py; do echo "== $$b"; $(PYTHON) $$b; done

lint: install
	$(PYTHON) -m pyflakes golong tests bench 2>/dev/null || $(PYTHON) -m compileall -q golong tests bench

clean:
	rm -rf runs .pytest_cache
