"""What goes on the queue: documents, image sources, and indexing operations."""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from clipfuse.errors import InvalidDocument
from clipfuse.schemas import limits as L

__all__ = [
    "RESERVED_FIELDS",
    "AttributeValue",
    "Document",
    "DocumentVectors",
    "ImageSource",
    "Scalar",
    "format_validation_error",
    "parse_document",
]

Scalar = Union[StrictBool, StrictInt, StrictFloat, StrictStr]
AttributeValue = Union[Scalar, list[Scalar]]

#: payload keys clipfuse owns; attributes may not use them
RESERVED_FIELDS = frozenset(
    {
        "id",
        "doc_id",
        "title",
        "caption",
        "description",
        "images",
        "attributes",
        "vectors",
        "image_vector",
        "text_vector",
    }
)
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class ImageSource(_Strict):
    """Exactly one of a local ``path``, an http(s) ``url`` or inline base64 ``data``.

    A plain string is accepted where an image source is expected: ``http://`` and
    ``https://`` strings become URLs, anything else a path.
    """

    path: Annotated[str, Field(min_length=1, max_length=L.MAX_PATH_CHARS)] | None = None
    url: Annotated[str, Field(min_length=1, max_length=L.MAX_URL_CHARS)] | None = None
    data: Annotated[str, Field(min_length=1, max_length=L.MAX_INLINE_IMAGE_CHARS)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"url": value} if value.lower().startswith(("http://", "https://")) else {"path": value}
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageSource:
        given = [name for name in ("path", "url", "data") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "an image source needs exactly one of 'path', 'url' or 'data' (base64); "
                f"got {', '.join(given) if given else 'none'}"
            )
        if self.url is not None and not self.url.lower().startswith(("http://", "https://")):
            raise ValueError(f"image url must start with http:// or https://, got {self.url[:80]!r}")
        if self.data is not None:
            try:
                base64.b64decode(self.data, validate=True)
            except (binascii.Error, ValueError) as e:
                raise ValueError(f"image 'data' is not valid base64: {e}") from None
        return self

    @property
    def kind(self) -> Literal["path", "url", "data"]:
        if self.path is not None:
            return "path"
        if self.url is not None:
            return "url"
        return "data"

    def describe(self) -> str:
        """A short, log-safe description (never the inline bytes)."""
        if self.path is not None:
            return f"path {self.path}"
        if self.url is not None:
            return f"url {self.url}"
        return f"inline data ({len(self.data or '')} base64 chars)"


#: one component of a precomputed vector: a JSON number (ints are taken as floats), finite
_Component = Annotated[StrictFloat, Field(allow_inf_nan=False)]
_Vector = Annotated[list[_Component], Field(min_length=1, max_length=L.MAX_VECTOR_DIM)]


class DocumentVectors(_Strict):
    """Embeddings the catalog computed itself, in the index's model space.

    ``image`` replaces embedding the document's images (they are then not loaded, only
    shown as references in hits); ``text`` replaces embedding its title / caption /
    description (BM25 still comes from those texts). Vectors are L2-normalised on
    ingest; one whose length is not the index model's dimension rejects its document.
    """

    image: _Vector | None = None
    text: _Vector | None = None

    @model_validator(mode="after")
    def _usable(self) -> DocumentVectors:
        if self.image is None and self.text is None:
            raise ValueError("vectors needs 'image' and/or 'text'")
        for name in ("image", "text"):
            vector = getattr(self, name)
            if vector is not None and not any(vector):
                raise ValueError(f"vectors.{name} is all zeros: a zero vector has no direction to search by")
        return self


def _check_scalar(name: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"attribute {name!r}: numbers must be finite, got {value}")
    if isinstance(value, str) and len(value) > L.MAX_ATTRIBUTE_STRING_CHARS:
        raise ValueError(
            f"attribute {name!r}: string of {len(value)} characters is over "
            f"MAX_ATTRIBUTE_STRING_CHARS={L.MAX_ATTRIBUTE_STRING_CHARS}"
        )


class Document(_Strict):
    """One product: an id, images, texts and filterable attributes.

    ``id`` is the catalog's own id; indexing the same id again replaces the
    previous version (ids are idempotent). At least one image, one text or one
    precomputed vector (``vectors``) is needed.
    """

    id: Annotated[str, Field(min_length=1, max_length=L.MAX_ID_CHARS)]
    images: Annotated[list[ImageSource], Field(max_length=L.MAX_IMAGES_PER_DOCUMENT)] = []
    title: Annotated[str, Field(max_length=L.MAX_TITLE_CHARS)] | None = None
    caption: Annotated[str, Field(max_length=L.MAX_CAPTION_CHARS)] | None = None
    description: Annotated[str, Field(max_length=L.MAX_DESCRIPTION_CHARS)] | None = None
    attributes: Annotated[dict[str, AttributeValue], Field(max_length=L.MAX_ATTRIBUTES)] = {}
    vectors: DocumentVectors | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and _CONTROL_RE.search(value):
            raise ValueError("id must not contain control characters")
        return value

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: dict[str, AttributeValue]) -> dict[str, AttributeValue]:
        for name, item in value.items():
            if len(name) > L.MAX_ATTRIBUTE_NAME_CHARS or not _NAME_RE.match(name):
                raise ValueError(
                    f"attribute name {name[:80]!r} must match {_NAME_RE.pattern} and be at most "
                    f"MAX_ATTRIBUTE_NAME_CHARS={L.MAX_ATTRIBUTE_NAME_CHARS} characters"
                )
            if name in RESERVED_FIELDS:
                raise ValueError(f"attribute name {name!r} is reserved by clipfuse; rename it")
            if isinstance(item, list):
                if len(item) > L.MAX_ATTRIBUTE_LIST_ITEMS:
                    raise ValueError(
                        f"attribute {name!r}: list of {len(item)} items is over "
                        f"MAX_ATTRIBUTE_LIST_ITEMS={L.MAX_ATTRIBUTE_LIST_ITEMS}"
                    )
                kinds = {_kind(v) for v in item}
                if len(kinds) > 1:
                    raise ValueError(f"attribute {name!r}: list mixes {sorted(kinds)}; use one type")
                for v in item:
                    _check_scalar(name, v)
            else:
                _check_scalar(name, item)
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Document:
        if (
            not self.images
            and self.vectors is None
            and not any(t and t.strip() for t in (self.title, self.caption, self.description))
        ):
            raise ValueError(
                "document is empty: give at least one image, one of title / caption / description, "
                "or a precomputed vector (vectors.image / vectors.text)"
            )
        return self

    @property
    def text(self) -> str:
        """The text that is embedded and BM25-encoded: title, caption, description."""
        return "\n".join(t for t in (self.title, self.caption, self.description) if t)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "string"


def format_validation_error(error: ValidationError, *, limit: int = 5) -> str:
    """A readable one-line summary of a pydantic error, without echoing huge inputs."""
    parts = []
    for item in error.errors()[:limit]:
        # loc parts can be user-chosen keys (extra fields, attribute names): never echo them whole
        loc = ".".join(_clip(str(p)) for p in item["loc"]) or "document"
        msg = item["msg"]
        ctx = item.get("ctx") or {}
        if item["type"] in {"string_too_long", "too_long"} and "max_length" in ctx:
            # the innermost field names the limit: images.0.url is MAX_URL_CHARS, not MAX_IMAGES_PER_DOCUMENT;
            # a whole path wins over its last part (vectors.text is not the query's text)
            path = ".".join(str(p) for p in item["loc"] if not isinstance(p, int))
            limit_name = _LIMIT_NAMES.get(path) or _LIMIT_NAMES.get(str(item["loc"][-1]) if item["loc"] else "", "")
            msg = f"{msg}" + (f" ({limit_name})" if limit_name else "")
        parts.append(f"{loc}: {msg}")
    more = len(error.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


_LIMIT_NAMES = {
    "id": f"MAX_ID_CHARS={L.MAX_ID_CHARS}",
    "title": f"MAX_TITLE_CHARS={L.MAX_TITLE_CHARS}",
    "caption": f"MAX_CAPTION_CHARS={L.MAX_CAPTION_CHARS}",
    "description": f"MAX_DESCRIPTION_CHARS={L.MAX_DESCRIPTION_CHARS}",
    "images": f"MAX_IMAGES_PER_DOCUMENT={L.MAX_IMAGES_PER_DOCUMENT}",
    "attributes": f"MAX_ATTRIBUTES={L.MAX_ATTRIBUTES}",
    "text": f"MAX_QUERY_TEXT_CHARS={L.MAX_QUERY_TEXT_CHARS}",
    "filters": f"MAX_FILTERS={L.MAX_FILTERS}",
    "url": f"MAX_URL_CHARS={L.MAX_URL_CHARS}",
    "path": f"MAX_PATH_CHARS={L.MAX_PATH_CHARS}",
    "data": f"MAX_INLINE_IMAGE_CHARS={L.MAX_INLINE_IMAGE_CHARS}",
    "vectors.image": f"MAX_VECTOR_DIM={L.MAX_VECTOR_DIM}",
    "vectors.text": f"MAX_VECTOR_DIM={L.MAX_VECTOR_DIM}",
}


def _clip(text: str, size: int = 80) -> str:
    return text if len(text) <= size else f"{text[:size]}...({len(text):,} chars)"


def parse_document(raw: Document | dict[str, Any] | InvalidDocument) -> Document:
    """Validate one raw document; raise :class:`InvalidDocument` with a readable reason.

    A reader that could not even read an item (a line that is not JSON) passes its
    :class:`InvalidDocument` in the item's place; it is raised here, so every caller
    rejects it like any other invalid document.
    """
    if isinstance(raw, InvalidDocument):
        raise raw
    if isinstance(raw, Document):
        return raw
    doc_id = raw.get("id") if isinstance(raw, dict) else None
    doc_id_str = str(doc_id)[: L.MAX_ID_CHARS] if isinstance(doc_id, (str, int)) else None
    if not isinstance(raw, dict):
        raise InvalidDocument(f"a document must be a JSON object, got {type(raw).__name__}", code="validation")
    try:
        return Document.model_validate(raw)
    except ValidationError as e:
        raise InvalidDocument(format_validation_error(e), doc_id=doc_id_str, code="validation") from None
