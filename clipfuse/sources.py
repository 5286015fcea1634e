"""Reading catalogs from disk: a JSONL file (one document per line) or a folder of images.

One reader for every entry point (``clipfuse index``, ``clipfuse enqueue``), so that a bad
line is reported the same way wherever it is read: as an :class:`InvalidDocument` in its
place in the stream (code ``invalid_json``), which the ingest core and the producer turn
into a rejection of that one line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clipfuse.errors import InvalidDocument

__all__ = ["IMAGE_SUFFIXES", "count_catalog", "read_catalog"]

#: files a folder catalog indexes (what Pillow decodes)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


def _images(folder: Path) -> Iterator[Path]:
    for file in sorted(folder.rglob("*")):
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
            yield file


def read_catalog(path: Path) -> Iterator[dict[str, Any] | Any]:
    """The raw documents of ``path``, in order; a line that is not JSON yields an InvalidDocument.

    A folder gives one document per image: id = its path relative to the folder, title from
    the file name, the image by absolute path (so workers on the same storage can read it).
    """
    if path.is_dir():
        for file in _images(path):
            title = file.stem.replace("_", " ").replace("-", " ")
            yield {"id": file.relative_to(path).as_posix(), "images": [{"path": str(file.resolve())}], "title": title}
        return
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                yield InvalidDocument(
                    f"line {number} is not JSON: {e}", doc_id=f"{path.name}:line{number}", code="invalid_json"
                )


def count_catalog(path: Path) -> int:
    """How many documents :func:`read_catalog` will yield (for progress bars)."""
    if path.is_dir():
        return sum(1 for _ in _images(path))
    with path.open(encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())
