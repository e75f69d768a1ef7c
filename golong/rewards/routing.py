"""Which reward a dataset row gets: tasks T1..T9, and the released GoLongRL (verl-format) records.

Native rows name a task (T1..T9, paper Table 1) and optionally a reward type; `TASK_TO_REWARD` is the
default. Released records carry `data_source`, `reward_model.ground_truth` and
`extra_info.reward_mode`; `RELEASED_ROUTES` below is the one table that maps them to a reward type
and to the ground-truth field that reward reads (see shared/golongrl-released-format.md):

- `retrieval_calculate` rows get the internal tenth reward type `retrieval_calculate` (registered in
  math_rewards.py): 1 iff the answer's `<relevant_doc_ids>` equal the gold doc ids as a set AND its
  `<continue_reasoning>` holds the gold math answer, else 0 (the reference scorer's hard reward).
  It counts as task T4 (numerical reasoning) in `REWARD_TO_TASK`.
- `longbench_pro` rows route by LongBench-Pro subtask. `reward_mode` may give the subtask in full
  (`T1.1 Global Cohesive Retrieval`), its id (`T1.1`), its name, or the metric name
  (`NDCG`, `Pairwise_Accuracy`, `Accuracy`, `F1_Score`, `SubEM`, `Summary`); case and spacing do not
  matter. Their Accuracy rows are free-text answers compared on the first answer line, which the
  `accuracy` reward does when the gold is not an option letter.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from golong.rewards.registry import REWARD_TYPES

TASK_TO_REWARD: dict[str, str] = {f"T{i}": reward for i, reward in enumerate(REWARD_TYPES, start=1)}
REWARD_TO_TASK: dict[str, str] = {**{r: t for t, r in TASK_TO_REWARD.items()}, "retrieval_calculate": "T4"}


@dataclass(frozen=True)
class Route:
    data_source: str
    reward_mode: str | None  # None: every reward_mode of this data_source
    reward_type: str
    gold: str  # the ground_truth field(s) the reward reads: "golden_label", "doc_ids" or "doc_ids+golden_label"


# fmt: off
RELEASED_ROUTES: tuple[Route, ...] = (
    Route("EM",                       None, "em",                  "golden_label"),
    Route("selection",                None, "accuracy",            "golden_label"),  # "The correct answer is (X)"
    Route("multitableqa_pretraining", None, "iou",                 "golden_label"),  # JSON table text
    Route("math_longcot_math_verify", None, "math_verify",         "golden_label"),
    Route("retrieval_calculate",      None, "retrieval_calculate", "doc_ids+golden_label"),
    # LongBench-Pro subtasks; `doc_ids` holds the gold items (for summaries: the reference summaries)
    Route("longbench_pro", "T1.1 Global Cohesive Retrieval",                         "ndcg",     "doc_ids"),
    Route("longbench_pro", "T1.2 Key-Snippet Retrieval",                             "ndcg",     "doc_ids"),
    Route("longbench_pro", "T2.1 Global Timeline Reconstruction",                    "pairwise", "doc_ids"),
    Route("longbench_pro", "T2.2 Local Causal Chain Sorting",                        "pairwise", "doc_ids"),
    Route("longbench_pro", "T3.1 Multi-Doc Integration QA",                          "accuracy", "doc_ids"),
    Route("longbench_pro", "T3.2 Single-Hop Fact QA",                                "accuracy", "doc_ids"),
    Route("longbench_pro", "T4.1 Global-Coverage Constrained Summary",               "rouge_l",  "doc_ids"),
    Route("longbench_pro", "T4.2 Query-Focused Summary",                             "rouge_l",  "doc_ids"),
    Route("longbench_pro", "T5.1 Full-Sentence Citation Alignment",                  "f1",       "doc_ids"),
    Route("longbench_pro", "T5.2 Key-Statement Citation Alignment",                  "f1",       "doc_ids"),
    Route("longbench_pro", "T6.1 Large-Scale Document Clustering",                   "subem",    "doc_ids"),
    Route("longbench_pro", "T6.2 Targeted Subset Cluster Identification",            "f1",       "doc_ids"),
    Route("longbench_pro", "T6.3 Global Frequency Analysis",                         "pairwise", "doc_ids"),
    Route("longbench_pro", "T7.1 Global Conflict & Inconsistency Localization",      "f1",       "doc_ids"),
    Route("longbench_pro", "T7.2 Targeted Rule or Condition Violation Detection",    "f1",       "doc_ids"),
    Route("longbench_pro", "T7.3 Comprehensive Error & Anomaly Sweep",               "f1",       "doc_ids"),
    Route("longbench_pro", "T8.1 Structured Multi-Source Consistency Verification",  "subem",    "doc_ids"),
    Route("longbench_pro", "T8.2 Single-Source Targeted Aggregation",                "subem",    "doc_ids"),
    Route("longbench_pro", "T8.3 Long-Context Procedural State Tracking",            "subem",    "doc_ids"),
    Route("longbench_pro", "T9.1 Dependency-Aware Multi-Version Impact Analysis",    "f1",       "doc_ids"),
    Route("longbench_pro", "T9.2 Localized Interface Change Detection",              "f1",       "doc_ids"),
    Route("longbench_pro", "T10.1 Large-Scale In-Context Rule Induction",            "subem",    "doc_ids"),
    Route("longbench_pro", "T10.2 Targeted Example-Based Rule Induction",            "subem",    "doc_ids"),
    Route("longbench_pro", "T11.1 Long-Range Entity & Commitment Tracking",          "accuracy", "doc_ids"),
    Route("longbench_pro", "T11.2 Short-Range Reference Resolution & State Query",   "accuracy", "doc_ids"),
    # LongBench-Pro metric names, for rows whose reward_mode names the metric rather than the subtask
    Route("longbench_pro", "NDCG",              "ndcg",     "doc_ids"),
    Route("longbench_pro", "Pairwise_Accuracy", "pairwise", "doc_ids"),
    Route("longbench_pro", "Accuracy",          "accuracy", "doc_ids"),
    Route("longbench_pro", "F1_Score",          "f1",       "doc_ids"),
    Route("longbench_pro", "SubEM",             "subem",    "doc_ids"),
    Route("longbench_pro", "Summary",           "rouge_l",  "doc_ids"),
)
# fmt: on

_SUBTASK = re.compile(r"^(t\d+\.\d+)\s+(.+)$")


def _mode_keys(reward_mode: str) -> list[str]:
    """The spellings a reward_mode is matched by: in full, and for `T1.1 Name` also `t1.1` and `name`."""
    full = " ".join(reward_mode.lower().replace("_", " ").split())
    m = _SUBTASK.match(full)
    return [full, m[1], m[2]] if m else [full]


def _index(routes: tuple[Route, ...]) -> dict[tuple[str, str | None], Route]:
    index: dict[tuple[str, str | None], Route] = {}
    for route in routes:
        for key in _mode_keys(route.reward_mode) if route.reward_mode else [None]:
            if (route.data_source, key) in index:
                raise ValueError(f"RELEASED_ROUTES: {route.data_source}/{key} is routed twice")
            index[(route.data_source, key)] = route
    return index


_ROUTES = _index(RELEASED_ROUTES)


def find_route(data_source, reward_mode) -> Route:
    """The route of a released record; ValueError naming what is unknown and what is known."""
    if (data_source, None) in _ROUTES:
        return _ROUTES[(data_source, None)]
    modes = [r.reward_mode for r in RELEASED_ROUTES if r.data_source == data_source]
    if not modes:
        known = ", ".join(dict.fromkeys(r.data_source for r in RELEASED_ROUTES))
        raise ValueError(f"unknown data_source {data_source!r}; known data sources: {known}")
    for key in _mode_keys(reward_mode) if isinstance(reward_mode, str) else []:
        if (data_source, key) in _ROUTES:
            return _ROUTES[(data_source, key)]
    raise ValueError(
        f"unknown extra_info.reward_mode {reward_mode!r} for data_source {data_source!r}; known reward modes: "
        + ", ".join(modes)
    )


def as_gold_label(label):
    """A golden_label as the rewards read it: text (a number becomes its text; a table may be a dict)."""
    return str(label) if isinstance(label, (int, float)) and not isinstance(label, bool) else label


def route_released(record: dict) -> tuple[str, object]:
    """(reward type, ground truth as `compute_score` expects it) for a released verl-format record.

    `reward_model.ground_truth` is an object (or a list of them, the last one scored) with
    `golden_label`, `doc_ids` and `summary`; raises ValueError when the record cannot be routed.
    """
    route = find_route(record.get("data_source"), (record.get("extra_info") or {}).get("reward_mode"))
    truth = (record.get("reward_model") or {}).get("ground_truth")
    if isinstance(truth, (list, tuple)) and truth:
        truth = truth[-1]
    if not isinstance(truth, dict):
        raise ValueError(f"data_source {route.data_source!r}: reward_model.ground_truth must be an object, "
                         f"got {truth!r:.80}")
    fields = route.gold.split("+")
    missing = [f for f in fields if truth.get(f) is None]
    if missing:
        raise ValueError(f"data_source {route.data_source!r}: reward_model.ground_truth has no {', '.join(missing)}")
    if "doc_ids" in fields and isinstance(truth["doc_ids"], str):
        raise ValueError(f"data_source {route.data_source!r}: ground_truth.doc_ids must be a list of strings")
    values = {f: [str(d) for d in truth[f]] if f == "doc_ids" else as_gold_label(truth[f]) for f in fields}
    return route.reward_type, values if len(fields) > 1 else values[fields[0]]
