"""Parsing untrusted JSON and writing untrusted text, without letting either raise.

Two hazards a catalog or a request body can carry:

* **Nesting**: ``json.loads`` recurses once per ``[`` / ``{``; a line nested 100,000 deep
  raises ``RecursionError``, which escapes every ``except ValueError``. :func:`loads_bounded`
  measures the depth on the raw text first (strings removed, brackets counted) and refuses
  a value deeper than ``MAX_JSON_DEPTH`` without parsing it.
* **Lone surrogates**: JSON may spell ``"\\ud800"``, which Python decodes to a ``str`` that
  cannot be encoded as UTF-8: writing it to a report or a terminal raises
  ``UnicodeEncodeError``. :func:`scrub` replaces each one with U+FFFD, so every text
  clipfuse prints or writes is valid UTF-8.

::

    >>> loads_bounded('{"a": [1, 2]}')
    {'a': [1, 2]}
    >>> loads_bounded("[" * 100 + "]" * 100)
    Traceback (most recent call last):
    ...
    clipfuse.errors.InvalidDocument: the value is JSON nested 100 levels deep, over MAX_JSON_DEPTH=32
    >>> scrub("bad \\ud800 id")
    'bad \\ufffd id'
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from clipfuse.errors import InvalidDocument
from clipfuse.schemas import limits as L

__all__ = ["json_depth", "loads_bounded", "markup_safe", "scrub", "scrub_value"]

#: a complete JSON string literal (the unrolled form: linear, no backtracking blow-up)
_STRING_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET_RE = re.compile(r"[^\[\]{}]+")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` in JSON ``text``, brackets inside strings not counted.

    On text that is not valid JSON this is an estimate (an unterminated string counts the
    brackets after it), which is fine for a bound: such text is refused either way.
    """
    brackets = _NOT_BRACKET_RE.sub("", _STRING_RE.sub("", text))
    if not brackets:
        return 0
    return max(0, max(accumulate(_DEPTH_STEP[c] for c in brackets)))


def loads_bounded(text: str | bytes, *, max_depth: int = L.MAX_JSON_DEPTH, what: str = "the value") -> Any:
    """``json.loads`` that raises only :class:`InvalidDocument`.

    Codes: ``invalid_utf8`` (bytes that do not decode), ``too_deep`` (checked before parsing),
    ``invalid_json``; the parser's own limits (``RecursionError``, the integer-digits limit)
    become ``invalid_json`` too, never let through. ``what`` starts the message (``line 3``).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidDocument(
                f"{what} is not valid UTF-8: {_describe_decode_error(e)}", code="invalid_utf8"
            ) from None
    # cheap test first: a value with few brackets cannot be deep
    if text.count("[") + text.count("{") > max_depth:
        depth = json_depth(text)
        if depth > max_depth:
            raise InvalidDocument(
                f"{what} is JSON nested {depth:,} levels deep, over MAX_JSON_DEPTH={max_depth}", code="too_deep"
            )
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidDocument(f"{what} is not JSON: {e}", code="invalid_json") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4,300 digits
        raise InvalidDocument(f"{what} is not usable JSON: {scrub(str(e))[:200]}", code="invalid_json") from None


def _describe_decode_error(error: UnicodeDecodeError) -> str:
    bad = error.object[error.start : error.start + 4]
    return f"byte {bad[:1].hex()} at offset {error.start} ({error.reason})"


def scrub(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (so it encodes as UTF-8)."""
    return _SURROGATE_RE.sub("\ufffd", text) if _SURROGATE_RE.search(text) else text


def scrub_value(value: Any) -> Any:
    """:func:`scrub` applied to every string (keys included) of a JSON-like value."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub_value(k): scrub_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_value(v) for v in value]
    return value


def markup_safe(value: object) -> str:
    """``str(value)`` scrubbed and with rich's console markup escaped: a user's ``[/]`` prints as text.

    Every text that came from a user (an id, a reason quoting a field, a path) goes through
    this before it reaches a rich console; unescaped, ``[/x]`` raises ``MarkupError``.
    """
    from rich.markup import escape

    return escape(scrub(str(value)))
