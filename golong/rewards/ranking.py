"""Ranking rewards: NDCG@k (T7) and pairwise order accuracy (T8). Items are the answer's lines."""
from __future__ import annotations

import math

from golong.rewards.extract import Answer, normalize
from golong.rewards.match import gold_list
from golong.rewards.registry import ScoringRules, register


def first_positions(items: list[str]) -> list[str]:
    """`items` in order, each kept at its first position only."""
    return list(dict.fromkeys(items))


def gold_ranking(gold, name: str) -> list[str]:
    ranking = first_positions([g for g in (normalize(g) for g in gold_list(gold, name)) if g])
    if not ranking:
        raise ValueError(f"{name}: empty gold")
    return ranking


@register("ndcg")
def ndcg(answer: Answer, gold, rules: ScoringRules) -> float:
    """T7. NDCG@k = DCG@k / IDCG@k with k = number of gold items.

    DCG@k = sum_{i=1..k} rel(p_i) / log2(i + 1) over the first k distinct predicted lines p_i, with
    graded linear relevance from the gold order: rel(g_j) = k - j + 1 for the j-th gold item (first k,
    last 1), 0 for anything not in the gold. IDCG@k is the DCG of the gold order itself.
    """
    ranking = gold_ranking(gold, "ndcg")
    k = len(ranking)
    relevance = {item: k - j for j, item in enumerate(ranking)}
    predicted = first_positions(answer.lines)[:k]
    dcg = sum(relevance.get(item, 0) / math.log2(i + 2) for i, item in enumerate(predicted))
    ideal = sum((k - i) / math.log2(i + 2) for i in range(k))
    return dcg / ideal


@register("pairwise")
def pairwise_order(answer: Answer, gold, rules: ScoringRules) -> float:
    """T8. Fraction of the k(k-1)/2 gold pairs (g_i before g_j) that the answer orders the same way.

    A pair with an item missing from the answer counts as wrong, so a partial list cannot earn full
    credit; a repeated item counts at its first position. With a single gold item (no pairs) the
    score is 1 if the answer lists it.
    """
    ranking = gold_ranking(gold, "pairwise")
    position = {item: i for i, item in enumerate(first_positions(answer.lines))}
    if len(ranking) == 1:
        return float(ranking[0] in position)
    found = [position.get(item) for item in ranking]
    k = len(ranking)
    correct = sum(
        1
        for i in range(k)
        for j in range(i + 1, k)
        if found[i] is not None and found[j] is not None and found[i] < found[j]
    )
    return correct / (k * (k - 1) // 2)
