"""Writing through an alias: every write reaches each live index of the alias, each with its own model.

The live indexes are the alias's target, the index a re-index is building (so nothing
written during a re-index is missing from it) and the previous index kept for a
rollback (so a rollback loses nothing). :class:`AliasWriter` re-reads the alias record
at most every ``ttl_s`` seconds before a write, so workers and ``clipfuse index`` learn of a
re-index, a swap or a prune without a restart, and re-reads it *after* every write: an index
that became live while the write ran (a re-index prepared, a swap) gets the write too.

Why the read after the write closes the stale-writer window: the re-index records its
``building`` index (``prepare``) before it reads the old index (``copy``), and verifies
before it moves the alias. A write to the old index whose re-read came before ``prepare``
was in the old index before the copy began, so the copy has it; a write whose re-read came
after ``prepare`` sees the new index (as ``building``, or as the target after a swap) and is
written there too. So no write lands on the old index only, however long it took (a batch
that began before the re-index and ended after its verify included).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from clipfuse.errors import ConfigurationError
from clipfuse.ingest.pipeline import batched
from clipfuse.plugin.protocol import Aliased, AliasRecord, Backend, physical_name
from clipfuse.schemas import Document, IngestReport

__all__ = ["AliasWriter", "IndexerLike", "resolve_alias"]

log = logging.getLogger(__name__)


class IndexerLike(Protocol):
    """What :class:`AliasWriter` needs of an indexer (``clipfuse.ingest.pipeline.Indexer``)."""

    backend: Backend
    batch_size: int

    def ensure_schema(self) -> None: ...

    def index(
        self, documents: Iterable[Any], *, on_batch: Callable[[IngestReport, int], None] | None = None
    ) -> IngestReport: ...

    def index_batch(self, raws: Sequence[Any]) -> IngestReport: ...

    def delete(self, ids: Sequence[str]) -> IngestReport: ...

    def close(self) -> None: ...


def resolve_alias(root: Backend, alias: str) -> AliasRecord | None:
    """The alias record of ``alias`` when the engine has one (None: a plain index, nothing, or no alias support)."""
    return root.read_alias(alias) if isinstance(root, Aliased) else None


class AliasWriter:
    """Writes documents and deletes to every live index behind ``alias``.

    ``indexer_for(backend, model_id)`` makes an indexer for one physical index with the
    embedder of ``model_id`` (``None``: the configured model). A fresh name (no alias, no
    index) is created as ``<alias>--<model>-<hash>`` with the alias pointing at it, when the
    engine supports aliases; a plain index made before aliases is written as it is.
    ``explicit_model``: a model the user chose; the target's recorded model must match it.
    The report is the target's; the other live indexes must take the same writes (their
    engine errors propagate, so the whole batch is retried).
    """

    def __init__(
        self,
        root: Backend,
        alias: str,
        *,
        indexer_for: Callable[[Backend, str | None], IndexerLike],
        default_model: str,
        explicit_model: str | None = None,
        ttl_s: float = 1.0,
    ) -> None:
        self.root = root
        self.alias = alias
        self.indexer_for = indexer_for
        self.default_model = default_model
        self.explicit_model = explicit_model
        self.ttl_s = ttl_s
        self._indexers: dict[str, IndexerLike] = {}
        self._live: list[str] = []
        self._checked = float("-inf")

    # -- resolution ---------------------------------------------------------------------
    def _open(self, name: str) -> IndexerLike:
        indexer = self._indexers.get(name)
        if indexer is None:
            backend = self.root.open_index(name) if isinstance(self.root, Aliased) else self.root
            info = backend.index_info()
            model = info.model if info is not None else None
            indexer = self.indexer_for(backend, model)
            self._indexers[name] = indexer
        return indexer

    def live(self, *, refresh: bool = False) -> list[tuple[str, IndexerLike]]:
        """``(physical name, indexer)`` of every index a write must reach, target first."""
        now = time.monotonic()
        if refresh or now - self._checked >= self.ttl_s or not self._live:
            record = resolve_alias(self.root, self.alias)
            if record is not None:
                names = list(record.live)
            elif self.root.index_info() is not None or not isinstance(self.root, Aliased):
                names = [self.alias]  # a plain index (made before aliases), or an engine without them
            else:
                names = [self._create()]
            for gone in [n for n in self._indexers if n not in names]:
                self._close(gone)
            self._live = names
            self._checked = now
            if self.explicit_model is not None:
                target = self._open(names[0])
                info = target.backend.index_info()
                if info is not None and info.model and info.model != self.explicit_model:
                    raise ConfigurationError(
                        f"{self.alias!r} points at {names[0]!r}, built with model {info.model!r}, not "
                        f"{self.explicit_model!r}: vectors of different models are not comparable; change the "
                        f"model with `clipfuse reindex --model {self.explicit_model}`"
                    )
        return [(name, self._open(name)) for name in self._live]

    def _create(self) -> str:
        assert isinstance(self.root, Aliased)
        physical = physical_name(self.alias, self.default_model)
        indexer = self._open(physical) if physical in self._indexers else None
        if indexer is None:
            backend = self.root.open_index(physical)
            indexer = self.indexer_for(backend, None)
            self._indexers[physical] = indexer
        indexer.ensure_schema()
        self.root.write_alias(AliasRecord(alias=self.alias, target=physical))
        log.info("created index %s behind the alias %s", physical, self.alias)
        return physical

    def _close(self, name: str) -> None:
        indexer = self._indexers.pop(name)
        indexer.close()
        if indexer.backend is not self.root:
            try:
                indexer.backend.close()
            except Exception:
                log.warning("closing %s failed", name, exc_info=True)

    # -- the indexer interface ------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        """The target's backend (what ``clipfuse optimize`` builds, what ``info`` counts)."""
        return self.live()[0][1].backend

    @property
    def backends(self) -> list[Backend]:
        return [indexer.backend for _, indexer in self.live()]

    @property
    def batch_size(self) -> int:
        return self.live()[0][1].batch_size

    def ensure_schema(self) -> None:
        for _, indexer in self.live():
            indexer.ensure_schema()

    def _reach_late(self, written: set[str], write: Callable[[IndexerLike], object]) -> None:
        """After a write: re-read the alias and write to every live index that did not get it yet."""
        for _ in range(5):  # an alias that moves five times during one batch: the next batch checks again
            late = [(name, indexer) for name, indexer in self.live(refresh=True) if name not in written]
            if not late:
                return
            for name, indexer in late:
                log.info("the alias %s moved during a write: writing it to %s too", self.alias, name)
                write(indexer)
                written.add(name)

    def index_batch(self, raws: Sequence[Document | dict[str, Any]]) -> IngestReport:
        live = self.live()
        reports = [indexer.index_batch(raws) for _, indexer in live]
        self._reach_late({name for name, _ in live}, lambda indexer: indexer.index_batch(raws))
        return reports[0]

    def index(
        self,
        documents: Iterable[Document | dict[str, Any]],
        *,
        on_batch: Callable[[IngestReport, int], None] | None = None,
    ) -> IngestReport:
        """Like ``Indexer.index``. With one live index its pipeline runs as is (images of the next
        batch load while this one embeds), each finished batch followed by the alias re-read of
        :meth:`index_batch`; with several, batch by batch to each of them."""
        live = self.live(refresh=True)
        if len(live) == 1:
            name, indexer = live[0]
            taken: deque[Document | dict[str, Any]] = deque()  # read by the pipeline, not yet reported

            def tee() -> Iterator[Document | dict[str, Any]]:
                for doc in documents:
                    taken.append(doc)
                    yield doc

            def finished(report: IngestReport, n: int) -> None:
                batch = [taken.popleft() for _ in range(min(n, len(taken)))]
                self._reach_late({name}, lambda other: other.index_batch(batch))
                if on_batch is not None:
                    on_batch(report, n)

            return indexer.index(tee(), on_batch=finished)
        total = IngestReport()
        for chunk in batched(documents, self.batch_size):
            report = self.index_batch(chunk)
            if on_batch is not None:
                on_batch(report, len(chunk))
            total = total.merge(report)
        return total

    def delete(self, ids: Sequence[str]) -> IngestReport:
        """Delete from every live index (no model needed: nothing is embedded)."""
        started = time.perf_counter()
        live = self.live()
        for _, indexer in live:
            indexer.backend.delete(list(ids))
        self._reach_late({name for name, _ in live}, lambda indexer: indexer.backend.delete(list(ids)))
        return IngestReport(deleted=len(ids), seconds=time.perf_counter() - started)

    def close(self) -> None:
        for name in list(self._indexers):
            self._close(name)
        try:
            self.root.close()
        except Exception:
            log.warning("closing the engine client failed", exc_info=True)
