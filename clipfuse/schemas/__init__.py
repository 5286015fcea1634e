"""The contract: documents, searches, hits and reports (pydantic v2, strict)."""

from clipfuse.schemas.documents import (
    RESERVED_FIELDS,
    AttributeValue,
    Document,
    DocumentVectors,
    ImageSource,
    Scalar,
    format_validation_error,
    parse_document,
)
from clipfuse.schemas.reports import IngestReport, Rejection, Stage
from clipfuse.schemas.search import (
    SIGNALS,
    FieldType,
    FilterCondition,
    FilterOp,
    FusionMethod,
    Hit,
    SearchRequest,
    SearchResponse,
    SignalScores,
    Weights,
    parse_filter,
)

__all__ = [
    "RESERVED_FIELDS",
    "SIGNALS",
    "AttributeValue",
    "Document",
    "DocumentVectors",
    "FieldType",
    "FilterCondition",
    "FilterOp",
    "FusionMethod",
    "Hit",
    "ImageSource",
    "IngestReport",
    "Rejection",
    "Scalar",
    "SearchRequest",
    "SearchResponse",
    "SignalScores",
    "Stage",
    "Weights",
    "format_validation_error",
    "parse_document",
    "parse_filter",
]
