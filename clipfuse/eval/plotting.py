"""The PNG chart of an evaluation: nDCG@10 per configuration, and recall@k curves (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from clipfuse.eval.runner import ConfigResult

__all__ = ["plot_results"]


def plot_results(results: Sequence[ConfigResult], path: Path, *, title: str = "", max_k: int = 50) -> Path:
    """Write a two-panel PNG: nDCG@10 bars per configuration, and mean recall@k for k = 1..``max_k``."""
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - matplotlib is a dependency of the eval extra
        raise ImportError("the eval chart needs matplotlib: pip install 'clipfuse[eval]'") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    names = [r.config.name for r in results]
    ndcg = [r.evaluation.means["ndcg@10"] for r in results]
    colors = [
        "#8c8c8c" if r.config.single_signal else "#d62728" if r.config.name.startswith("tuned") else "#1f77b4"
        for r in results
    ]
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(14, 0.45 * len(results) + 3.0), width_ratios=(1, 1))
    y = list(range(len(results)))[::-1]
    bars.barh(y, ndcg, color=colors)
    bars.set_yticks(y, names, fontsize=8)
    for yi, value in zip(y, ndcg, strict=True):
        bars.text(value + 0.005, yi, f"{value:.3f}", va="center", fontsize=8)
    bars.set_xlim(0, min(1.0, max(ndcg, default=0.0) * 1.15 + 0.02))
    bars.set_xlabel("nDCG@10 (grey: one signal, blue: fusion, red: tuned)")
    bars.set_title("nDCG@10 per configuration")
    for r in results:
        curve = r.evaluation.recall_curve[:max_k]
        style = ":" if r.config.single_signal else "-"
        width = 2.2 if r.config.name.startswith("tuned") else 1.2
        color = "#d62728" if r.config.name.startswith("tuned") else None
        curves.plot(range(1, len(curve) + 1), curve, style, linewidth=width, color=color, label=r.config.name)
    curves.set_xscale("log")
    curves.set_xlabel("k")
    curves.set_ylabel("mean recall@k")
    curves.set_ylim(0, 1.0)
    curves.grid(True, which="both", alpha=0.3)
    curves.set_title("recall@k (dotted: one signal)")
    curves.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
