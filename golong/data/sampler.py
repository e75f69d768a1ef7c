"""Which prompts each training step uses: uniform sampling without replacement, epoch by epoch.

Paper Eq. 4 samples prompts uniformly from the whole dataset, so each task is drawn in proportion
to its share of the data; here every epoch is one random permutation of all examples, cut into
batches. The permutation of epoch e is a pure function of (seed, e) and the position is two
integers (epoch, cursor), so a resumed run that loads `state_dict()` draws the very same batches
as an uninterrupted one. No global RNG is touched.

Streaming rollouts (golong/rollout/streaming.py) draw prompts one slot at a time (`take`) and hand back
the prompts of responses they aborted (`give_back`): those are drawn first, before the epoch's order goes
on, and are part of the saved state, so no prompt is lost or repeated across a resume.
"""
from __future__ import annotations

import random


class PromptSampler:
    def __init__(self, num_examples: int, batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = True):
        if num_examples < 1:
            raise ValueError("PromptSampler: the dataset is empty")
        if batch_size < 1 or (drop_last and batch_size > num_examples):
            raise ValueError(f"PromptSampler: batch size {batch_size} does not fit {num_examples} examples; "
                             f"set data.prompts_per_step to at most {num_examples}")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.cursor = 0  # position within the current epoch's order
        self.returned: list[int] = []  # handed back (streaming's aborted prompts): drawn before the order goes on
        self._order = self._epoch_order(0)

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.num_examples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    @property
    def epochs_completed(self) -> int:
        """Whole passes over the data drawn so far (an epoch with no full batch left counts as done)."""
        remaining = self.num_examples - self.cursor
        done = remaining == 0 or (self.drop_last and remaining < self.batch_size)
        return self.epoch + (1 if done else 0)

    @property
    def batches_drawn(self) -> int:
        """Batches drawn since the first one, over every epoch."""
        return self.epoch * self.steps_per_epoch + -(-self.cursor // self.batch_size)

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(self.num_examples))
        if self.shuffle:
            # A string seed is hashed with SHA-512: the same order in every process and Python version.
            random.Random(f"golong-sampler:{self.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self) -> list[int]:
        """Indices of the next batch; a new epoch starts when the current one has no full batch left."""
        if self.returned:  # handed back by a streaming run this one resumes: they come first
            return self.take(self.batch_size)
        remaining = self.num_examples - self.cursor
        if remaining == 0 or (self.drop_last and remaining < self.batch_size):
            self.epoch += 1
            self.cursor = 0
            self._order = self._epoch_order(self.epoch)
        batch = self._order[self.cursor:self.cursor + self.batch_size]
        self.cursor += len(batch)
        return batch

    def take(self, count: int) -> list[int]:
        """`count` prompts, one at a time (streaming's free slots): the handed-back ones first, then the
        epoch's order, a new epoch starting when the current one is used up (no batch to keep whole)."""
        rows = self.returned[:count]
        del self.returned[:count]
        while len(rows) < count:
            if self.cursor == self.num_examples:
                self.epoch += 1
                self.cursor = 0
                self._order = self._epoch_order(self.epoch)
            more = self._order[self.cursor:self.cursor + count - len(rows)]
            self.cursor += len(more)
            rows += more
        return rows

    def give_back(self, rows: list[int]) -> None:
        """Prompts drawn but not used (streaming aborted their responses): the next draws return them
        first, in this order."""
        self.returned = list(rows) + self.returned

    def state_dict(self) -> dict:
        return {"num_examples": self.num_examples, "batch_size": self.batch_size, "seed": self.seed,
                "shuffle": self.shuffle, "drop_last": self.drop_last, "epoch": self.epoch, "cursor": self.cursor,
                "returned": list(self.returned)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; the dataset and batching must be the ones it was saved with."""
        for key in ("num_examples", "batch_size", "seed", "shuffle", "drop_last"):
            if state[key] != getattr(self, key):
                raise ValueError(f"PromptSampler: checkpoint has {key}={state[key]!r} but this run has "
                                 f"{getattr(self, key)!r}; resume with the same dataset and data settings")
        self.epoch = state["epoch"]
        self.cursor = state["cursor"]
        self.returned = list(state.get("returned", []))  # absent in checkpoints from before streaming
        self._order = self._epoch_order(self.epoch)
