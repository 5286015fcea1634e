"""A property fuzzer for the catalog reader and the document parser (issue 11).

Arbitrary bytes and arbitrary JSON values (lone surrogates, deep nesting, huge integers and
near-documents included) are written to a real file and read back. The properties:

* every line that is not blank becomes exactly one item, and only those lines do, in order,
  each mapped back to its line;
* every item becomes exactly one Document or one InvalidDocument (nothing else is raised);
* the report of the rejections is valid UTF-8 JSON, and printing it to a rich console
  does not raise.

Bounded for CI: ``FUZZ_EXAMPLES`` examples per property (well under a minute in all on two
cores); set ``CLIPFUSE_FUZZ_EXAMPLES`` to run more. The figures are printed with ``-s``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table

from clipfuse.errors import InvalidDocument
from clipfuse.schemas import Document, IngestReport, Rejection, parse_document
from clipfuse.schemas.safetext import markup_safe
from clipfuse.sources import CatalogReader

FUZZ_EXAMPLES = int(os.environ.get("CLIPFUSE_FUZZ_EXAMPLES", "1000"))
_BLANK = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"
_FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
_RUNS: dict[str, list[float]] = {}


def expected_lines(data: bytes) -> list[int]:
    """The oracle: which lines (1-based) are not blank, computed without the reader."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for number, line in enumerate(lines, start=1):
        if number == 1 and line.startswith(_BOM):
            line = line[len(_BOM) :]
        if line.strip(_BLANK):
            out.append(number)
    return out


def check_catalog(data: bytes, *, max_line_bytes: int | None = None, name: str) -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "catalog.jsonl"
        path.write_bytes(data)
        reader = CatalogReader(path, **({"max_line_bytes": max_line_bytes} if max_line_bytes else {}))
        items = list(reader)  # must not raise, whatever the bytes
        assert reader.count() == len(items)
    lines = expected_lines(data)
    assert len(items) == len(lines)
    assert [reader.line_of(p) for p in range(len(items))] == lines

    documents = 0
    rejected: list[Rejection] = []
    for position, item in enumerate(items):
        try:
            doc = parse_document(item)
        except InvalidDocument as e:  # the only thing parse_document may raise
            rejected.append(
                Rejection(
                    id=e.doc_id,
                    code=e.code,
                    reason=e.message,
                    stage="validate",
                    position=position,
                    line=reader.line_of(position),
                    document=Rejection.keepable(item),
                )
            )
        else:
            assert isinstance(doc, Document)
            doc.model_dump_json().encode("utf-8")  # an accepted document is writable too
            documents += 1
    assert documents + len(rejected) == len(lines)  # each line: one document or one rejection

    text = IngestReport(indexed=documents, rejected=rejected).model_dump_json()
    back = json.loads(text.encode("utf-8").decode("utf-8"))  # valid UTF-8 JSON
    assert [r["line"] for r in back["rejected"]] == [r.line for r in rejected]
    out = io.StringIO()
    table = Table("line", "id", "code", "reason")
    for r in rejected:
        table.add_row(str(r.line), markup_safe(r.id), markup_safe(r.code), markup_safe(r.reason))
    Console(file=out, width=120).print(table)
    _RUNS.setdefault(name, []).append(time.perf_counter() - started)


# -- strategies -----------------------------------------------------------------------------------
#: strings with what breaks writers and consoles: lone surrogates, control characters, markup
hostile_text = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
    st.sampled_from(["[/]", "[/x] [bold]", "\x00", "\u2028", "\ufeff", "caf\u00e9", "\U0001f600", "\\"]),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**30, max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(hostile_text, st.sampled_from(["id"])), inner, max_size=4),
    ),
    max_leaves=20,
)
#: almost a document: the real keys with arbitrary values (exercises the parser's every field)
near_documents = st.fixed_dictionaries(
    {"id": st.one_of(hostile_text, st.integers(), json_values)},
    optional={
        "title": st.one_of(hostile_text, json_values),
        "caption": hostile_text,
        "description": json_values,
        "images": st.one_of(
            st.lists(
                st.one_of(
                    hostile_text,
                    st.fixed_dictionaries(
                        {}, optional={"path": hostile_text, "url": hostile_text, "data": hostile_text}
                    ),
                ),
                max_size=3,
            ),
            json_values,
        ),
        "attributes": st.one_of(st.dictionaries(hostile_text, json_values, max_size=4), json_values),
        "vectors": st.one_of(
            st.fixed_dictionaries({}, optional={"image": st.lists(st.floats(), max_size=4), "text": json_values}),
            json_values,
        ),
        "extra": json_values,
    },
)


def _encode(value: Any, ascii_only: bool) -> bytes:
    """JSON text of ``value``; a lone surrogate is escaped (``ensure_ascii``) or written as its raw bytes."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


def _deep(depth: int) -> bytes:
    return b'{"id":"d","title":"t","attributes":{"a":' + b"[" * depth + b"]" * depth + b"}}"


line_of_json = st.one_of(
    st.builds(_encode, st.one_of(json_values, near_documents), st.booleans()),
    st.builds(_deep, st.integers(min_value=1, max_value=5_000)),
    st.binary(max_size=60),
    st.sampled_from(
        [b"", b"   ", b"\r", b"{", b"[" * 40, b"null", b"1" * 5000, b"\xff\xfe", _BOM + b"{}", _BOM + b" " * 90]
    ),
)


@_FUZZ
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    check_catalog(data, name="arbitrary bytes")


@_FUZZ
@given(lines=st.lists(line_of_json, max_size=12), bom=st.booleans(), final_newline=st.booleans())
def test_arbitrary_json_lines(lines: list[bytes], bom: bool, final_newline: bool) -> None:
    data = (_BOM if bom else b"") + b"\n".join(lines) + (b"\n" if final_newline else b"")
    check_catalog(data, name="JSON values and near-documents")


@_FUZZ
@given(lines=st.lists(line_of_json, max_size=8), limit=st.integers(min_value=1, max_value=80))
def test_line_length_limit(lines: list[bytes], limit: int) -> None:
    check_catalog(b"\n".join(lines), max_line_bytes=limit, name="with a small line limit")


@pytest.fixture(scope="module", autouse=True)
def _figures() -> Any:
    yield
    total = sum(len(v) for v in _RUNS.values())
    seconds = sum(sum(v) for v in _RUNS.values())
    for name, runs in _RUNS.items():
        print(f"\nfuzz [{name}]: {len(runs)} examples, {sum(runs):.2f}s in the properties")
    print(f"fuzz: {total} examples in all, {seconds:.2f}s in the properties")
