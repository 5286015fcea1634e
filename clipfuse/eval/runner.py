"""Running queries and scoring run configurations (single signals and fusion methods).

The runner asks the engine once per query for each signal's candidate list (the
image-vector, text-vector and BM25 lists that :class:`~clipfuse.plugin.HybridSearcher`
fuses), then builds every configuration's ranking from those lists with the same
pure functions the searcher uses (:func:`clipfuse.plugin.fusion.fuse`), the same
candidate depth, and the same rule that a signal with weight 0 is left out. So a
configuration's ranking here is what ``HybridSearcher.search`` returns for it when
clipfuse fuses; where the engine fuses itself (Qdrant's RRF with a whole-number k,
DBSF with all weights 1) the scores are the same and only the order of exactly tied
scores may differ. Trying 100 weight settings therefore costs 100 cheap fusions, not
100 rounds of engine queries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clipfuse.errors import ClipfuseError
from clipfuse.eval.loaders import EvalQuery
from clipfuse.eval.metrics import Evaluation, Qrels, evaluate, mean
from clipfuse.plugin import fusion
from clipfuse.plugin.fusion import Ranked
from clipfuse.plugin.ranking import tie_order
from clipfuse.schemas import SearchRequest, Weights
from clipfuse.schemas.search import SIGNALS, FusionMethod

if TYPE_CHECKING:
    from clipfuse.plugin.searcher import HybridSearcher

__all__ = [
    "ConfigResult",
    "RunConfig",
    "SignalLists",
    "collect_signals",
    "evaluate_configs",
    "rank",
    "standard_configs",
]

_FUSION_LABEL = {"rrf": "RRF", "linear": "min-max linear", "zscore": "z-score linear", "dbsf": "DBSF"}


def _num(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class RunConfig:
    """How one run ranks: the fusion method, its signal weights and (for RRF) its k."""

    name: str
    fusion: FusionMethod = "rrf"
    weights: Weights = field(default_factory=Weights)
    rrf_k: float = 60.0

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(s for s, w in zip(SIGNALS, self.weights.as_tuple(), strict=True) if w > 0)

    @property
    def single_signal(self) -> bool:
        return len(self.signals) == 1

    def request_fields(self) -> dict[str, Any]:
        """The :class:`SearchRequest` fields that make this configuration."""
        return {"fusion": self.fusion, "rrf_k": self.rrf_k, "weights": self.weights}

    def cli_args(self) -> str:
        """The options of ``clipfuse search`` for this configuration."""
        w = self.weights
        args = f"--fusion {self.fusion} --weights image={_num(w.image)},text={_num(w.text)},bm25={_num(w.bm25)}"
        return args + (f" --rrf-k {_num(self.rrf_k)}" if self.fusion == "rrf" else "")

    def python(self, query: str = 'text="..."') -> str:
        """The Python :class:`SearchRequest` for this configuration."""
        w = self.weights
        rrf = f", rrf_k={float(self.rrf_k)!r}" if self.fusion == "rrf" else ""
        return (
            f"SearchRequest({query}, fusion={self.fusion!r}{rrf}, "
            f"weights=Weights(image={w.image!r}, text={w.text!r}, bm25={w.bm25!r}))"
        )

    def describe(self) -> str:
        if self.single_signal:
            return f"{self.signals[0]} only"
        w = self.weights
        text = f"{_FUSION_LABEL[self.fusion]} image={_num(w.image)} text={_num(w.text)} bm25={_num(w.bm25)}"
        return text + (f" k={_num(self.rrf_k)}" if self.fusion == "rrf" else "")


def standard_configs(weights: Weights | None = None, rrf_k: float = 60.0) -> list[RunConfig]:
    """Each signal alone, then each fusion method: RRF (equal weights, ``rrf_k``), weighted RRF
    (``weights``, shown only when they are not all equal), min-max linear, z-score linear and DBSF at ``weights``."""
    weights = weights or Weights()
    configs = [
        RunConfig("image vector", "rrf", Weights(image=1, text=0, bm25=0), rrf_k),
        RunConfig("text vector", "rrf", Weights(image=0, text=1, bm25=0), rrf_k),
        RunConfig("BM25", "rrf", Weights(image=0, text=0, bm25=1), rrf_k),
        RunConfig(f"RRF k={_num(rrf_k)}", "rrf", Weights(), rrf_k),
    ]
    if len(set(weights.as_tuple())) > 1:
        configs.append(RunConfig(f"weighted RRF k={_num(rrf_k)}", "rrf", weights, rrf_k))
    configs += [
        RunConfig("min-max linear", "linear", weights, rrf_k),
        RunConfig("z-score linear", "zscore", weights, rrf_k),
        RunConfig("DBSF", "dbsf", weights, rrf_k),
    ]
    return configs


@dataclass
class SignalLists:
    """Each query's candidate list per signal (best first), as the engine returned them."""

    lists: dict[str, dict[str, list[Ranked]]]
    kinds: dict[str, str]
    #: queries the engine could not answer, with the reason (their lists are empty)
    errors: dict[str, str]
    candidates: int
    seconds: float = 0.0


def collect_signals(
    searcher: HybridSearcher,
    queries: Sequence[EvalQuery],
    *,
    depth: int = 100,
    on_query: Callable[[int], None] | None = None,
) -> SignalLists:
    """Query the engine once per query with every signal on; keep each signal's candidate list.

    The candidate depth is what ``HybridSearcher`` uses for a request of ``k=depth``
    (``max(100, 2 * depth)``).
    """
    candidates = SearchRequest(text="x", k=depth).candidate_limit
    started = time.perf_counter()
    lists: dict[str, dict[str, list[Ranked]]] = {}
    kinds: dict[str, str] = {}
    errors: dict[str, str] = {}
    for position, query in enumerate(queries, start=1):
        kinds[query.id] = query.group or query.kind
        try:
            # "linear" is always fused by clipfuse: the engine only returns the per-signal lists
            request = query.request(weights=Weights(), fusion="linear", k=depth, candidates=candidates)
            hybrid = searcher.build_query(request)
            result = searcher.backend.search(hybrid)
            # ties in document-id order, as HybridSearcher fuses them
            lists[query.id] = {
                r.signal: tie_order(ranked) for r, ranked in zip(hybrid.retrievers, result.lists, strict=True)
            }
        except (ClipfuseError, ValueError) as e:
            errors[query.id] = str(e)
            lists[query.id] = {}
        if on_query is not None:
            on_query(position)
    return SignalLists(
        lists=lists, kinds=kinds, errors=errors, candidates=candidates, seconds=time.perf_counter() - started
    )


def rank(lists: Mapping[str, Sequence[Ranked]], config: RunConfig, depth: int) -> list[str]:
    """The ranking ``config`` gives from one query's signal lists (as ``HybridSearcher`` fuses)."""
    active = [(s, w) for s, w in zip(SIGNALS, config.weights.as_tuple(), strict=True) if w > 0 and s in lists]
    if not active:
        return []  # e.g. BM25 alone for an image-only query: no signal can run
    merged = fusion.fuse(
        config.fusion,
        [lists[s] for s, _ in active],
        k=config.rrf_k,
        weights=[w for _, w in active],
        limit=depth,
    )
    return [f.id for f in merged]


@dataclass
class ConfigResult:
    config: RunConfig
    evaluation: Evaluation
    #: mean nDCG@10 per query group (its ``group`` label, else text / image / image+text)
    ndcg_by_kind: dict[str, float]
    #: scored queries for which no signal of this configuration could run
    no_signal: int = 0
    #: the figure the tuner selected on (dev split), when this is the tuned configuration
    dev_score: float | None = None

    def to_json(self) -> dict[str, Any]:
        ev = self.evaluation
        return {
            "name": self.config.name,
            "description": self.config.describe(),
            "fusion": self.config.fusion,
            "weights": self.config.weights.model_dump(),
            "rrf_k": self.config.rrf_k,
            "cli": self.config.cli_args(),
            "python": self.config.python(),
            "metrics": ev.means,
            "ndcg@10_by_kind": self.ndcg_by_kind,
            "recall_curve": ev.recall_curve,
            "queries": ev.coverage.evaluated,
            "queries_without_signal": self.no_signal,
            "dev_score": self.dev_score,
        }


def evaluate_configs(
    signals: SignalLists,
    qrels: Qrels,
    configs: Iterable[RunConfig],
    *,
    depth: int = 100,
    query_ids: Iterable[str] | None = None,
    no_relevant: str = "zero",
) -> list[ConfigResult]:
    """Score each configuration on the queries (all, or ``query_ids``)."""
    ids = list(signals.lists) if query_ids is None else [q for q in query_ids if q in signals.lists]
    results = []
    for config in configs:
        run = {q: rank(signals.lists[q], config, depth) for q in ids}
        # on a split, only its queries' judgments; on all queries, every judgment (so unrun ones are reported)
        sub_qrels = qrels if query_ids is None else {q: qrels[q] for q in ids if q in qrels}
        ev = evaluate(run, sub_qrels, depth=depth, no_relevant=no_relevant)  # type: ignore[arg-type]
        by_kind: dict[str, list[float]] = {}
        for q, figures in ev.per_query.items():
            by_kind.setdefault(signals.kinds.get(q, "text"), []).append(figures["ndcg@10"])
        no_signal = sum(
            1
            for q in ev.per_query
            if not any(w > 0 and s in signals.lists[q] for s, w in zip(SIGNALS, config.weights.as_tuple(), strict=True))
        )
        results.append(
            ConfigResult(
                config=config,
                evaluation=ev,
                ndcg_by_kind={kind: mean(values) for kind, values in sorted(by_kind.items())},
                no_signal=no_signal,
            )
        )
    return results
