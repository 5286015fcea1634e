"""BM25 sparse vectors for engines without their own analyser (Qdrant).

Uses ``qdrant_edge.Bm25``: Qdrant's own tokenizer, stemmer and term ids, offline,
so vectors written here match what a Qdrant server's BM25 inference produces. The
IDF part of BM25 is applied by the engine (sparse vector with ``Modifier.IDF``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Bm25Encoder", "SparseVector"]


@dataclass(frozen=True, slots=True)
class SparseVector:
    indices: tuple[int, ...]
    values: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.indices)


class Bm25Encoder:
    """Documents get saturated term frequencies; queries unit weights per unique term."""

    def __init__(self, *, language: str = "english", k: float = 1.2, b: float = 0.75, avg_len: float = 64.0) -> None:
        from qdrant_edge import Bm25, Bm25Config

        self.config = {"language": language, "k": k, "b": b, "avg_len": avg_len}
        self._model = Bm25(Bm25Config(k=k, b=b, avg_len=avg_len, language=language))

    @staticmethod
    def _convert(vector: object) -> SparseVector:
        indices = tuple(int(i) for i in vector.indices)  # type: ignore[attr-defined]
        values = tuple(float(v) for v in vector.values)  # type: ignore[attr-defined]
        return SparseVector(indices, values)

    def encode_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        return [self._convert(self._model.embed_document(text)) for text in texts]

    def encode_query(self, text: str) -> SparseVector:
        return self._convert(self._model.embed_query(text))
