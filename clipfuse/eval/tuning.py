"""Choosing fusion weights and the RRF constant on a development split, by a bounded random search.

Search space (a grid, sampled without replacement):

* fusion method: ``rrf``, ``linear`` (min-max), ``zscore``, ``dbsf``;
* each signal weight in :data:`WEIGHT_GRID` (0 switches the signal off; not all 0);
* RRF k in :data:`RRF_K_GRID` (RRF only; the score-based methods ignore k).

The standard configurations (each signal alone, each method at equal weights) are
tried first, then random points until ``budget`` distinct configurations have been
scored; the best on the development queries wins (ties: the earlier trial). The
held-out queries are never looked at here.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from clipfuse.eval.metrics import Qrels
from clipfuse.eval.runner import RunConfig, SignalLists, evaluate_configs, standard_configs
from clipfuse.schemas import Weights
from clipfuse.schemas.search import FusionMethod

__all__ = ["RRF_K_GRID", "WEIGHT_GRID", "TuneResult", "split_queries", "tune"]

WEIGHT_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
RRF_K_GRID: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 60.0, 100.0)
METHODS: tuple[FusionMethod, ...] = ("rrf", "linear", "zscore", "dbsf")


def split_queries(
    query_ids: Sequence[str], kinds: dict[str, str], *, dev_fraction: float = 0.5, seed: int = 0
) -> tuple[list[str], list[str]]:
    """A seeded split into (development, held-out), stratified by query kind so both get the same mix."""
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be between 0 and 1 (exclusive), got {dev_fraction}")
    rng = random.Random(f"clipfuse-eval-split:{seed}")
    dev: list[str] = []
    test: list[str] = []
    by_kind: dict[str, list[str]] = {}
    for q in sorted(query_ids):
        by_kind.setdefault(kinds.get(q, "text"), []).append(q)
    for kind in sorted(by_kind):
        ids = by_kind[kind]
        rng.shuffle(ids)
        cut = round(len(ids) * dev_fraction)
        dev += ids[:cut]
        test += ids[cut:]
    if not dev or not test:
        raise ValueError(f"{len(query_ids)} queries are too few to split into a development and a held-out part")
    return sorted(dev), sorted(test)


@dataclass
class TuneResult:
    best: RunConfig
    best_score: float
    metric: str
    #: every configuration tried, with its development score, in trial order
    trials: list[tuple[RunConfig, float]]
    dev_ids: list[str]


def _key(config: RunConfig) -> tuple[object, ...]:
    k = config.rrf_k if config.fusion == "rrf" else None
    # weights that are proportional give the same ranking for every method here; keep them distinct anyway
    return (config.fusion, config.weights.as_tuple(), k)


def _random_config(rng: random.Random, index: int) -> RunConfig:
    while True:
        weights = tuple(rng.choice(WEIGHT_GRID) for _ in range(3))
        if any(w > 0 for w in weights):
            break
    method = rng.choice(METHODS)
    k = rng.choice(RRF_K_GRID) if method == "rrf" else 60.0
    return RunConfig(
        f"trial {index}",
        method,
        Weights(image=weights[0], text=weights[1], bm25=weights[2]),
        k,  # type: ignore[arg-type]
    )


def tune(
    signals: SignalLists,
    qrels: Qrels,
    dev_ids: Sequence[str],
    *,
    budget: int = 100,
    seed: int = 0,
    metric: str = "ndcg@10",
    depth: int = 100,
    rrf_k: float = 60.0,
) -> TuneResult:
    """Score up to ``budget`` distinct configurations on ``dev_ids``; return the best."""
    if budget < 1:
        raise ValueError("budget must be at least 1")
    rng = random.Random(f"clipfuse-eval-tune:{seed}")
    candidates: list[RunConfig] = []
    seen: set[tuple[object, ...]] = set()
    for config in standard_configs(Weights(), rrf_k):
        if _key(config) not in seen and len(candidates) < budget:
            seen.add(_key(config))
            candidates.append(config)
    # the grid holds 4 methods x 215 weight triples (x 9 k for RRF): far more than any budget used here
    attempts = 0
    while len(candidates) < budget and attempts < budget * 50:
        attempts += 1
        config = _random_config(rng, len(candidates) + 1)
        if _key(config) in seen:
            continue
        seen.add(_key(config))
        candidates.append(config)
    results = evaluate_configs(signals, qrels, candidates, depth=depth, query_ids=dev_ids)
    trials = [(r.config, r.evaluation.means[metric]) for r in results]
    best_config, best_score = trials[0]
    for config, score in trials[1:]:
        if score > best_score:
            best_config, best_score = config, score
    tuned = RunConfig("tuned", best_config.fusion, best_config.weights, best_config.rrf_k)
    return TuneResult(
        best=tuned,
        best_score=best_score,
        metric=metric,
        trials=trials,
        dev_ids=list(dev_ids),
    )
