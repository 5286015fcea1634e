"""Demo assets: a synthetic product catalog and a small CLIP model trained on it.

* :mod:`clipfuse.demo.catalog` generates a deterministic synthetic catalog
  (products, rendered images and a JSONL file).
* :mod:`clipfuse.demo.train` trains the small open_clip model shipped in
  :func:`demo_model_dir` (loadable with
  ``open_clip.create_model_and_transforms(f"local-dir:{demo_model_dir()}")``).

Importing this package does not import torch.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["demo_model_dir", "demo_model_name"]


def demo_model_dir() -> Path:
    """Folder holding the shipped demo CLIP model (open_clip ``local-dir:`` format)."""
    return Path(__file__).parent / "model"


def demo_model_name() -> str:
    """open_clip model name of the demo model: ``"local-dir:<absolute model folder>"``."""
    return f"local-dir:{demo_model_dir().resolve()}"
