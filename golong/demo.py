"""CPU demo tooling: the supervised warm-up that gives RL a starting model, and the held-out table.

The paper starts RL from a capable instruction model. The demo does the same at toy scale: the
random-init tiny model (tied embeddings, `DEMO_MODEL`) is first fine-tuned for 150 steps of 16 rows
(about half a minute on one core) on documents of its own (the warm-up split of
golong.data.synthetic.demo_splits), with the loss on the answer only. That teaches it to write
`[Answer]`, an answer of the right kind and EOS, and stops while it is learning to read the
context: it answers about 40% of held-out questions right when sampled at temperature 1, so RL has
a model whose G responses differ in reward, as the paper's starting point does, and room above it.
With 110 warm-up steps the reading has not started, and RL from there drifts to long answers
(reward ~0.07 throughout); by 300 steps the warm-up alone solves most rows.

    python -m golong.demo compare START.json TRAINED.json --out TABLE.md   # `golong eval` reports side by side
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from golong.tiny_model import TinyModelSpec

WARMUP_MARKER = "golong_warmup.json"
# The demo's tiny model: a vocabulary of whole words (golong.data.synthetic.demo_corpus), and tied input
# and output embeddings, which make copying a word of the context into the answer easy for 2 layers
# (untied, the warm-up stayed near chance for 400 steps; tied, it passes 0.9 by step 300).
DEMO_MODEL = TinyModelSpec(vocab_size=384, byte_level=False, tie_word_embeddings=True)


def warmup_batches(model_dir: str, rows_path: str, batch_size: int):
    """(input_ids, labels) batches of the rows at `rows_path`: the chat-templated prompt, as the
    trainer renders it, then the gold answer (`answer_text`) and EOS; labels -100 on the prompt and
    padding. One pass over the rows, in file order (a last partial batch is dropped)."""
    import torch
    from transformers import AutoTokenizer

    from golong.data.config import DataConfig
    from golong.data.loader import load_examples
    from golong.data.prompts import render_prompt
    from golong.data.synthetic import answer_text

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in open(rows_path, encoding="utf-8")]
    examples = load_examples([rows_path], DataConfig()).examples
    pairs = []
    for example, row in zip(examples, rows):
        prompt = tokenizer(render_prompt(example, tokenizer, enable_thinking=False), add_special_tokens=False)["input_ids"]
        target = tokenizer(answer_text(row["answer"]), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        pairs.append((prompt, target))
    for start in range(0, len(pairs) - batch_size + 1, batch_size):
        chunk = pairs[start:start + batch_size]
        width = max(len(p) + len(t) for p, t in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id)  # (B, T)
        labels = torch.full((len(chunk), width), -100)  # (B, T)
        for i, (p, t) in enumerate(chunk):
            ids[i, :len(p) + len(t)] = torch.tensor(p + t)
            labels[i, len(p):len(p) + len(t)] = torch.tensor(t)
        yield ids, labels


def sft_warmup(init_dir: str, rows_path: str, out_dir: str, steps: int, batch_size: int = 16, lr: float = 1e-3,
               seed: int = 0) -> str:
    """Fine-tune the model at `init_dir` for `steps` steps of `batch_size` rows of `rows_path` (in
    file order, from the top again when they run out; AdamW at a constant `lr`, one thread, so the
    result is the same on every run) and save it with its tokenizer to `out_dir`. Idempotent: a
    folder with the marker is returned as it is. Returns `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    marker = os.path.join(out_dir, WARMUP_MARKER)
    if os.path.exists(marker):
        return out_dir
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a fixed reduction order: the same weights from every run
    model = AutoModelForCausalLM.from_pretrained(init_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    batches = list(warmup_batches(init_dir, rows_path, batch_size))
    if steps > 0 and not batches:
        raise ValueError(f"{rows_path} has fewer than batch_size={batch_size} rows: no warm-up step to take")
    losses = []
    for step in range(steps):
        ids, labels = batches[step % len(batches)]
        # Padding is on the right, so causal attention keeps it out of every real position: no mask needed.
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    torch.set_num_threads(threads)
    model.generation_config = GenerationConfig.from_pretrained(init_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(init_dir).save_pretrained(out_dir)
    shutil.copy(os.path.join(init_dir, "golong_tiny.json"), out_dir)  # the tiny model's spec travels with it
    with open(marker, "w") as f:  # written last: a folder without it is incomplete and rebuilt
        json.dump({"init": init_dir, "rows": rows_path, "steps": steps, "batch_size": batch_size, "lr": lr,
                   "seed": seed, "loss_first": losses[0] if losses else None,
                   "loss_last": losses[-1] if losses else None}, f)
    return out_dir


def compare_table(start: dict, trained: dict, metric: str = "mean_score") -> str:
    """Two `golong eval` reports side by side, per task and overall: start, trained, and the change."""
    lines = [f"| task | rows | start {metric} | trained {metric} | change |", "|---|---|---|---|---|"]
    names = sorted(set(start["tasks"]) | set(trained["tasks"]))
    for name, a, b in [(t, start["tasks"].get(t), trained["tasks"].get(t)) for t in names] + \
            [("overall", start["overall"], trained["overall"])]:
        if not a or not b or a[metric] is None or b[metric] is None:
            lines.append(f"| {name} | - | - | - | - |")
            continue
        lines.append(f"| {name} | {b['rows']} | {a[metric]:.3f} | {b[metric]:.3f} | {b[metric] - a[metric]:+.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m golong.demo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compare", help="print two `golong eval` reports side by side (and write them as markdown)")
    p.add_argument("start", help="report of the starting model")
    p.add_argument("trained", help="report of the trained model")
    p.add_argument("--out", help="also write the table here")
    args = parser.parse_args(argv)
    with open(args.start) as f, open(args.trained) as g:
        table = compare_table(json.load(f), json.load(g))
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
