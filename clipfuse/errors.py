"""Typed errors for clipfuse.

The hierarchy is small on purpose::

    ClipfuseError
    ├── ConfigurationError      settings or arguments that cannot work (fix the config)
    ├── InvalidDocument         one document cannot be indexed (rejected alone)
    ├── InvalidQuery            a search request that cannot be answered (fix the request)
    ├── EmbeddingError          the model failed on an input
    └── BackendError            the search engine refused or failed
        └── BackendUnavailable  the engine cannot be reached now (retry later)

Every error keeps its constructor arguments in ``args`` and implements
``__reduce__`` so it survives pickling (Celery result backends, process pools).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "ClipfuseError",
    "ConfigurationError",
    "EmbeddingError",
    "InvalidDocument",
    "InvalidQuery",
    "StoreLocked",
]


class ClipfuseError(Exception):
    """Base class of every error raised by clipfuse."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, self.args)


class ConfigurationError(ClipfuseError):
    """The configuration (settings, arguments, model files) cannot work."""


class StoreLocked(ConfigurationError):
    """An embedded store is open in another process; it allows one at a time (workers wait and retry)."""


class InvalidQuery(ClipfuseError):
    """A search request that cannot be answered as sent."""


class EmbeddingError(ClipfuseError):
    """The embedding model failed."""


class InvalidDocument(ClipfuseError):
    """A document that cannot be indexed.

    ``code`` is a short machine-readable reason (``image_too_large``,
    ``image_unreadable``, ``validation`` ...); ``message`` is for people.
    """

    def __init__(self, message: str, *, doc_id: str | None = None, code: str = "invalid") -> None:
        super().__init__(message)
        self.doc_id = doc_id
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_invalid_document, (self.message, self.doc_id, self.code))


def _rebuild_invalid_document(message: str, doc_id: str | None, code: str) -> InvalidDocument:
    return InvalidDocument(message, doc_id=doc_id, code=code)


class BackendError(ClipfuseError):
    """The search engine refused a request or failed."""


class BackendUnavailable(BackendError):
    """The search engine cannot be reached; the operation may be retried."""
