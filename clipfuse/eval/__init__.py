"""Search quality: ranking metrics, evaluation inputs, runs per signal and fusion method, tuning, charts.

* :mod:`clipfuse.eval.metrics`: Recall@k, MRR@10, nDCG@10 (graded), mAP; trec_eval conventions.
* :mod:`clipfuse.eval.loaders`: TREC / JSONL qrels, queries JSONL, Karpathy-split Flickr30K / MS-COCO.
* :mod:`clipfuse.eval.runner`: one engine round per query, every configuration fused from its lists.
* :mod:`clipfuse.eval.tuning`: bounded random search of fusion, weights and RRF k on a dev split.
* :mod:`clipfuse.eval.plotting`: the PNG chart (matplotlib).
* :mod:`clipfuse.eval.demo`: graded queries for the synthetic demo catalog.
* :mod:`clipfuse.eval.cli`: the ``clipfuse eval`` command.

Importing this package imports neither torch nor matplotlib.
"""

from __future__ import annotations

from clipfuse.eval.loaders import EvalDataError, EvalQuery, load_karpathy, load_qrels, load_queries
from clipfuse.eval.metrics import METRICS, Evaluation, evaluate
from clipfuse.eval.runner import ConfigResult, RunConfig, collect_signals, evaluate_configs, standard_configs
from clipfuse.eval.tuning import split_queries, tune

__all__ = [
    "METRICS",
    "ConfigResult",
    "EvalDataError",
    "EvalQuery",
    "Evaluation",
    "RunConfig",
    "collect_signals",
    "evaluate",
    "evaluate_configs",
    "load_karpathy",
    "load_qrels",
    "load_queries",
    "split_queries",
    "standard_configs",
    "tune",
]
