"""Reading catalogs from disk: a JSONL file (one document per line) or a folder of images.

One reader for every entry point (``clipfuse index``, ``clipfuse enqueue``), so that a bad
line is reported the same way wherever it is read. The rule: **every line that is not blank
becomes exactly one item**, either the JSON value it holds (which the ingest core and the
producer then validate as a document) or an :class:`InvalidDocument` in its place, which
they turn into a rejection of that line alone. Nothing in the file can raise out of the
reader:

* bytes are decoded line by line: a line that is not UTF-8 is refused (``invalid_utf8``),
  the lines around it are read;
* a line longer than ``MAX_CATALOG_LINE_BYTES`` is refused (``line_too_long``) without
  being held in memory;
* a line nested deeper than ``MAX_JSON_DEPTH`` is refused (``too_deep``) before it is
  parsed, and a line that is not JSON is refused (``invalid_json``).

A refused line's id is ``<file name>:line<N>``; :meth:`CatalogReader.line_of` maps the
position of any item (as the ingest report and the producer count them) back to its line::

    reader = CatalogReader(Path("catalog.jsonl"))
    report = indexer.index(reader)
    for rejection in report.rejected:
        print(reader.line_of(rejection.position), rejection.code, rejection.reason)
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from clipfuse.errors import InvalidDocument
from clipfuse.schemas import limits as L
from clipfuse.schemas.safetext import loads_bounded

__all__ = ["IMAGE_SUFFIXES", "CatalogReader", "count_catalog", "read_catalog"]

#: files a folder catalog indexes (what Pillow decodes)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
#: what JSON calls whitespace: a line of only these is blank and skipped
_BLANK = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"
_SKIP_CHUNK = 1 << 20


def _images(folder: Path) -> Iterator[Path]:
    for file in sorted(folder.rglob("*")):
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
            yield file


def _lines(fh: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, its bytes without the line break or None when too long, its length) per line.

    A line over ``max_bytes`` of nothing but whitespace is blank: it comes back as ``b""``.
    """
    if fh.read(len(_BOM)) != _BOM:  # a UTF-8 byte-order mark opens some exports: not part of line 1
        fh.seek(0)
    number = 0
    while True:
        raw = fh.readline(max_bytes + 1)
        if not raw:
            return
        number += 1
        if raw.endswith(b"\n") or len(raw) <= max_bytes:
            body = raw[:-1] if raw.endswith(b"\n") else raw
            yield number, body, len(body)
            continue
        size = len(raw)  # too long: skip to the end of the line without keeping it
        blank = not raw.strip(_BLANK)
        while True:
            rest = fh.readline(_SKIP_CHUNK)
            size += len(rest)
            blank = blank and not rest.strip(_BLANK)
            if not rest or rest.endswith(b"\n"):
                break
        yield number, b"" if blank else None, size - (1 if rest.endswith(b"\n") else 0)


class CatalogReader:
    """The items of a catalog, in order, each a JSON value or an :class:`InvalidDocument`.

    A folder gives one document per image: id = its path relative to the folder, title from
    the file name, the image by absolute path (so workers on the same storage can read it).
    Iterating again reads the file again.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_line_bytes: int = L.MAX_CATALOG_LINE_BYTES,
        max_depth: int = L.MAX_JSON_DEPTH,
    ) -> None:
        self.path = Path(path)
        self.max_line_bytes = max_line_bytes
        self.max_depth = max_depth
        self._line_numbers = array("Q")

    def line_of(self, position: int | None) -> int | None:
        """The catalog line of the item at ``position`` (None for a folder or an unknown position)."""
        if position is None or not 0 <= position < len(self._line_numbers):
            return None
        return int(self._line_numbers[position])

    def __iter__(self) -> Iterator[dict[str, Any] | Any]:
        self._line_numbers = array("Q")
        if self.path.is_dir():
            for file in _images(self.path):
                title = file.stem.replace("_", " ").replace("-", " ")
                yield {
                    "id": file.relative_to(self.path).as_posix(),
                    "images": [{"path": str(file.resolve())}],
                    "title": title,
                }
            return
        with self.path.open("rb") as fh:
            for number, body, size in _lines(fh, self.max_line_bytes):
                if body is not None and not body.strip(_BLANK):
                    continue
                self._line_numbers.append(number)
                yield self._item(number, body, size)

    def _item(self, number: int, body: bytes | None, size: int) -> Any:
        where = f"{self.path.name}:line{number}"
        if body is None:
            return InvalidDocument(
                f"line {number} is {size:,} bytes, over MAX_CATALOG_LINE_BYTES={self.max_line_bytes:,}; "
                "send large images by path or URL",
                doc_id=where,
                code="line_too_long",
            )
        try:
            return loads_bounded(body, max_depth=self.max_depth, what=f"line {number}")
        except InvalidDocument as e:
            return InvalidDocument(e.message, doc_id=where, code=e.code)

    def count(self) -> int:
        """How many items iterating will yield (for progress bars), without parsing any line."""
        if self.path.is_dir():
            return sum(1 for _ in _images(self.path))
        with self.path.open("rb") as fh:
            total = 0
            for _, body, _ in _lines(fh, self.max_line_bytes):
                if body is None or body.strip(_BLANK):
                    total += 1
            return total


def read_catalog(path: Path) -> Iterator[dict[str, Any] | Any]:
    """The items of ``path`` in order (see :class:`CatalogReader`)."""
    return iter(CatalogReader(path))


def count_catalog(path: Path) -> int:
    """How many items :func:`read_catalog` will yield (for progress bars)."""
    return CatalogReader(path).count()
