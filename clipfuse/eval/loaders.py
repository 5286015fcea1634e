"""Reading evaluation inputs: qrels (TREC or JSONL), queries (JSONL), Karpathy-split Flickr30K / MS-COCO.

Formats
-------
TREC qrels, one judgment per line, whitespace separated (the second column is ignored)::

    q1 0 p907-00042 2
    q1 0 p907-00107 1

JSONL qrels, one object per line, either one judgment or all of a query's::

    {"query_id": "q1", "doc_id": "p907-00042", "grade": 2}
    {"query_id": "q2", "judgments": {"p907-00003": 2, "p907-00311": 1}}

Queries JSONL, one object per line: ``id`` and at least one of ``text`` and ``image``
(a path, relative to the queries file, or an http(s) URL); ``modifier`` is the text
applied to the image ("but in black"; ``text`` with an ``image`` means the same);
an optional ``group`` label breaks the figures down by query type::

    {"id": "q1", "text": "red striped t-shirt"}
    {"id": "q2", "image": "query-images/q2.jpg"}
    {"id": "q3", "image": "query-images/q3.jpg", "modifier": "black"}

Grades are integers; ``>= 1`` is relevant (see :mod:`clipfuse.eval.metrics`).
A judgment repeated for the same (query, document) keeps the last grade.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from clipfuse.errors import ClipfuseError
from clipfuse.schemas import ImageSource, SearchRequest

__all__ = [
    "EvalDataError",
    "EvalQuery",
    "KarpathySplit",
    "load_karpathy",
    "load_qrels",
    "load_queries",
    "write_qrels_trec",
    "write_queries",
]


class EvalDataError(ClipfuseError):
    """An evaluation input (queries, qrels, dataset file) cannot be read."""


@dataclass(frozen=True)
class EvalQuery:
    """One query: a text, an image, or an image with a modifier text."""

    id: str
    text: str | None = None
    image: str | None = None
    #: optional label to break figures down by ("visual", "catalog", ...); default: the kind
    group: str | None = None

    @property
    def kind(self) -> Literal["text", "image", "image+text"]:
        if self.image is None:
            return "text"
        return "image+text" if self.text else "image"

    def request(self, **fields: Any) -> SearchRequest:
        """The :class:`SearchRequest` for this query (``fields``: weights, fusion, k, ...)."""
        image = ImageSource.model_validate(self.image) if self.image is not None else None
        return SearchRequest(text=self.text, image=image, **fields)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.image is not None:
            out["image"] = self.image
            if self.text:
                out["modifier"] = self.text
        elif self.text is not None:
            out["text"] = self.text
        if self.group:
            out["group"] = self.group
        return out


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise EvalDataError(f"{path} does not exist or is not a file")
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                yield number, line


def _json_line(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise EvalDataError(f"{path}:{number}: not JSON ({e})") from None
    if not isinstance(value, dict):
        raise EvalDataError(f"{path}:{number}: expected a JSON object, got {type(value).__name__}")
    return value


def _grade(path: Path, number: int, value: Any) -> int:
    if isinstance(value, bool):
        raise EvalDataError(f"{path}:{number}: grade must be an integer, got {value!r}")
    try:
        grade = float(value)
    except (TypeError, ValueError):
        raise EvalDataError(f"{path}:{number}: grade must be an integer, got {value!r}") from None
    if not grade.is_integer():
        raise EvalDataError(f"{path}:{number}: grade must be an integer, got {value!r}")
    return int(grade)


def load_qrels(path: Path, *, fmt: Literal["auto", "trec", "jsonl"] = "auto") -> dict[str, dict[str, int]]:
    """Read qrels as ``{query_id: {doc_id: grade}}``; ``auto`` picks JSONL when the first line is an object."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    for number, line in _lines(path):
        kind = fmt
        if kind == "auto":
            kind = "jsonl" if line.lstrip().startswith("{") else "trec"
        if kind == "trec":
            parts = line.split()
            if len(parts) != 4:
                raise EvalDataError(
                    f"{path}:{number}: a TREC qrels line is 'query_id 0 doc_id grade' (4 fields), got {len(parts)}"
                )
            qrels.setdefault(parts[0], {})[parts[2]] = _grade(path, number, parts[3])
            continue
        obj = _json_line(path, number, line)
        query_id = obj.get("query_id")
        if not isinstance(query_id, (str, int)) or isinstance(query_id, bool):
            raise EvalDataError(f"{path}:{number}: needs a 'query_id'")
        judged = qrels.setdefault(str(query_id), {})
        if "judgments" in obj:
            if not isinstance(obj["judgments"], dict):
                raise EvalDataError(f"{path}:{number}: 'judgments' must be an object {{doc_id: grade}}")
            for doc_id, grade in obj["judgments"].items():
                judged[str(doc_id)] = _grade(path, number, grade)
        elif "doc_id" in obj:
            judged[str(obj["doc_id"])] = _grade(path, number, obj.get("grade", 1))
        else:
            raise EvalDataError(f"{path}:{number}: needs 'doc_id' (and 'grade') or 'judgments'")
    return qrels


def load_queries(path: Path) -> list[EvalQuery]:
    """Read a queries JSONL file; relative image paths are resolved against its folder."""
    path = Path(path)
    queries: list[EvalQuery] = []
    seen: set[str] = set()
    for number, line in _lines(path):
        obj = _json_line(path, number, line)
        raw_id = obj.get("id", obj.get("query_id"))
        if raw_id is None or isinstance(raw_id, bool) or str(raw_id) == "":
            raise EvalDataError(f"{path}:{number}: a query needs an 'id'")
        query_id = str(raw_id)
        if query_id in seen:
            raise EvalDataError(f"{path}:{number}: query id {query_id!r} appears twice")
        seen.add(query_id)
        text = obj.get("modifier") or obj.get("text")
        image = obj.get("image")
        if text is not None and not isinstance(text, str):
            raise EvalDataError(f"{path}:{number}: 'text' / 'modifier' must be a string")
        if image is not None:
            if not isinstance(image, str) or not image:
                raise EvalDataError(f"{path}:{number}: 'image' must be a path or an http(s) URL")
            if not image.lower().startswith(("http://", "https://")) and not Path(image).is_absolute():
                image = str((path.parent / image).resolve())
        if not (text and text.strip()) and image is None:
            raise EvalDataError(f"{path}:{number}: query {query_id!r} has neither a text nor an image")
        group = obj.get("group")
        queries.append(
            EvalQuery(
                id=query_id,
                text=text if text and text.strip() else None,
                image=image,
                group=str(group) if group else None,
            )
        )
    return queries


def write_queries(path: Path, queries: list[EvalQuery]) -> Path:
    """Write queries as JSONL (image paths as given: pass paths relative to ``path``'s folder to keep it portable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for query in queries:
            fh.write(json.dumps(query.to_json(), ensure_ascii=False) + "\n")
    return path


def write_qrels_trec(path: Path, qrels: dict[str, dict[str, int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for query_id, judged in qrels.items():
            for doc_id, grade in judged.items():
                fh.write(f"{query_id} 0 {doc_id} {grade}\n")
    return path


@dataclass
class KarpathySplit:
    """One split of a Karpathy-format dataset: images to index, captions as text→image queries."""

    dataset: str
    split: str
    #: catalog documents (one per image; ``id`` = the image's file name)
    documents: list[dict[str, Any]]
    queries: list[EvalQuery]
    #: each caption's one relevant image, grade 1
    qrels: dict[str, dict[str, int]]
    #: images listed in the JSON but absent from the images folder (left out, with their captions)
    missing_images: list[str]

    def write_catalog(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as fh:
            for doc in self.documents:
                fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
        return path


def load_karpathy(
    annotations: Path, images_dir: Path, *, split: str = "test", limit_images: int | None = None
) -> KarpathySplit:
    """Read ``dataset_flickr30k.json`` / ``dataset_coco.json`` (Karpathy splits) and the images folder.

    Flickr30K images lie directly in ``images_dir`` (``flickr30k-images/``); MS-COCO's
    under ``images_dir/<filepath>/`` (``val2014/...``). The test splits are 1000 images /
    5000 captions (Flickr30K) and 5000 / 25010 (MS-COCO), as in open_clip's retrieval table.
    """
    annotations, images_dir = Path(annotations), Path(images_dir)
    if not annotations.is_file():
        raise EvalDataError(f"{annotations} does not exist: give the Karpathy-split JSON (dataset_flickr30k.json)")
    if not images_dir.is_dir():
        raise EvalDataError(f"{images_dir} is not a folder of images")
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EvalDataError(f"{annotations}: not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise EvalDataError(f"{annotations}: expected an object with an 'images' list (Karpathy format)")
    documents: list[dict[str, Any]] = []
    queries: list[EvalQuery] = []
    qrels: dict[str, dict[str, int]] = {}
    missing: list[str] = []
    for entry in data["images"]:
        if entry.get("split") != split:
            continue
        if limit_images is not None and len(documents) >= limit_images:
            break
        filename = entry.get("filename")
        if not filename:
            raise EvalDataError(f"{annotations}: an image entry has no 'filename'")
        image_path = images_dir / entry.get("filepath", "") / filename
        if not image_path.is_file():
            missing.append(filename)
            continue
        documents.append({"id": filename, "images": [{"path": str(image_path.resolve())}]})
        for position, sentence in enumerate(entry.get("sentences", [])):
            raw = (sentence.get("raw") or " ".join(sentence.get("tokens", []))).strip()
            if not raw:
                continue
            query_id = f"s{sentence.get('sentid', f'{filename}-{position}')}"
            queries.append(EvalQuery(id=query_id, text=raw))
            qrels[query_id] = {filename: 1}
    if not documents:
        raise EvalDataError(f"{annotations}: no image of split {split!r} found under {images_dir}")
    return KarpathySplit(
        dataset=str(data.get("dataset", annotations.stem)),
        split=split,
        documents=documents,
        queries=queries,
        qrels=qrels,
        missing_images=missing,
    )
