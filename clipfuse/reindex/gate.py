"""The evaluation gate of a re-index: both indexes, the same queries and judgments, one decision.

Both indexes are queried by :func:`clipfuse.eval.runner.collect_signals` (each with its
own model) and every standard configuration is scored (:func:`evaluate_configs`, the
``clipfuse eval`` figures). The decision reads one figure: ``metric`` of ``config``
(default nDCG@10 of plain RRF, what a search without weights runs): the swap is refused
when the new index is worse than the old one by more than ``tolerance``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clipfuse.eval.metrics import METRICS
from clipfuse.eval.runner import ConfigResult, collect_signals, evaluate_configs, standard_configs

if TYPE_CHECKING:
    from clipfuse.embedding import Embedder
    from clipfuse.eval.loaders import EvalQuery
    from clipfuse.images import ImageLoader
    from clipfuse.plugin.protocol import Backend

__all__ = ["GateResult", "evaluate_index", "run_gate"]

DEFAULT_CONFIG = "RRF k=60"


@dataclass
class GateResult:
    metric: str
    config: str
    tolerance: float
    old_model: str | None
    new_model: str
    old: list[ConfigResult]
    new: list[ConfigResult]

    def figure(self, results: list[ConfigResult]) -> float:
        for result in results:
            if result.config.name == self.config:
                return float(result.evaluation.means[self.metric])
        raise KeyError(self.config)

    @property
    def old_value(self) -> float:
        return self.figure(self.old)

    @property
    def new_value(self) -> float:
        return self.figure(self.new)

    @property
    def passed(self) -> bool:
        return self.new_value >= self.old_value - self.tolerance

    def rows(self) -> list[tuple[str, float, float, float]]:
        """(configuration, old, new, new - old) of ``metric`` for every configuration."""
        by_name = {r.config.name: r for r in self.new}
        return [
            (
                r.config.name,
                float(r.evaluation.means[self.metric]),
                float(by_name[r.config.name].evaluation.means[self.metric]),
                float(by_name[r.config.name].evaluation.means[self.metric]) - float(r.evaluation.means[self.metric]),
            )
            for r in self.old
            if r.config.name in by_name
        ]

    def verdict(self) -> str:
        delta = self.new_value - self.old_value
        if self.passed:
            return (
                f"gate passed: {self.metric} of {self.config} {self.new_value:.4f} (new) vs {self.old_value:.4f} "
                f"(old), {delta:+.4f}, tolerance {self.tolerance:g}"
            )
        return (
            f"gate refused the swap: {self.metric} of {self.config} is {self.new_value:.4f} with {self.new_model} "
            f"against {self.old_value:.4f} with {self.old_model} ({delta:+.4f}, more than the tolerance "
            f"{self.tolerance:g} worse); the alias stays on the old index"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "config": self.config,
            "tolerance": self.tolerance,
            "old_model": self.old_model,
            "new_model": self.new_model,
            "old": self.old_value,
            "new": self.new_value,
            "passed": self.passed,
            "rows": [{"config": c, "old": o, "new": n, "delta": d} for c, o, n, d in self.rows()],
        }


def evaluate_index(
    backend: Backend,
    embedder: Embedder,
    queries: list[EvalQuery],
    qrels: dict[str, dict[str, int]],
    *,
    depth: int = 100,
    image_loader: ImageLoader | None = None,
) -> list[ConfigResult]:
    from clipfuse.plugin.searcher import HybridSearcher

    searcher = HybridSearcher(backend, embedder=embedder, image_loader=image_loader)
    signals = collect_signals(searcher, queries, depth=depth)
    return evaluate_configs(signals, qrels, standard_configs(), depth=depth)


def run_gate(
    old: tuple[Backend, Embedder],
    new: tuple[Backend, Embedder],
    queries: list[EvalQuery],
    qrels: dict[str, dict[str, int]],
    *,
    metric: str = "ndcg@10",
    config: str = DEFAULT_CONFIG,
    tolerance: float = 0.01,
    depth: int = 100,
    image_loader: ImageLoader | None = None,
) -> GateResult:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    old_results = evaluate_index(*old, queries, qrels, depth=depth, image_loader=image_loader)
    new_results = evaluate_index(*new, queries, qrels, depth=depth, image_loader=image_loader)
    names = [r.config.name for r in old_results]
    if config not in names:
        raise ValueError(f"unknown configuration {config!r}; choose one of {', '.join(names)}")
    return GateResult(
        metric=metric,
        config=config,
        tolerance=tolerance,
        old_model=getattr(old[1], "model_id", None),
        new_model=str(getattr(new[1], "model_id", "?")),
        old=old_results,
        new=new_results,
    )
