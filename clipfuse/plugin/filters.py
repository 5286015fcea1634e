"""Checking filters against an index's fields, and typing their values.

Filters name attribute fields; the index records which fields exist and their
type (``keyword``, ``number``, ``bool``). A filter on an unknown field, or with a
value that cannot be the field's type, is an :class:`InvalidQuery` naming the
known fields. The engine modules translate the checked conditions; nothing
user-given is ever pasted into a query string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from clipfuse.errors import InvalidQuery
from clipfuse.schemas import AttributeValue, FieldType, FilterCondition, FilterExpr, FilterGroup, Scalar

__all__ = ["field_type_of", "infer_field_types", "resolve_filter_tree", "resolve_filters"]


def field_type_of(value: AttributeValue) -> FieldType:
    item = value[0] if isinstance(value, list) and value else value
    if isinstance(item, bool):
        return "bool"
    if isinstance(item, (int, float)):
        return "number"
    return "keyword"


def infer_field_types(attributes: Mapping[str, AttributeValue]) -> dict[str, FieldType]:
    return {
        name: field_type_of(value) for name, value in attributes.items() if not (isinstance(value, list) and not value)
    }


def _coerce(field: str, kind: FieldType, value: Scalar) -> Scalar:
    if kind == "keyword":
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                return float(str(value))
            except ValueError:
                raise InvalidQuery(f"filter on {field!r}: the field holds numbers, got {value!r}") from None
        return value
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise InvalidQuery(f"filter on {field!r}: the field holds true/false, got {value!r}")


def resolve_filters(filters: Sequence[FilterCondition], fields: Mapping[str, FieldType]) -> tuple[FilterCondition, ...]:
    """Check each filter's field exists and coerce its values to the field's type."""
    out = []
    for condition in filters:
        kind = fields.get(condition.field)
        if kind is None:
            known = ", ".join(sorted(fields)) or "none yet (index documents with attributes first)"
            raise InvalidQuery(f"unknown filter field {condition.field!r}; filterable fields: {known}")
        if condition.op in ("lt", "lte", "gt", "gte") and kind != "number":
            raise InvalidQuery(
                f"filter on {condition.field!r}: '{condition.op}' needs a number field; {condition.field!r} is {kind}"
            )
        value: Any
        if isinstance(condition.value, list):
            value = [_coerce(condition.field, kind, v) for v in condition.value]
        else:
            value = _coerce(condition.field, kind, condition.value)
        out.append(FilterCondition(field=condition.field, op=condition.op, value=value))
    return tuple(out)


def resolve_filter_tree(tree: FilterGroup | None, fields: Mapping[str, FieldType]) -> FilterGroup | None:
    """:func:`resolve_filters` on every condition of a filter tree (``SearchRequest.where``)."""
    if tree is None:
        return None

    def resolve(items: Sequence[FilterExpr]) -> list[FilterExpr]:
        out: list[FilterExpr] = []
        for item in items:
            if isinstance(item, FilterCondition):
                out.extend(resolve_filters([item], fields))
            else:
                resolved = resolve_filter_tree(item, fields)
                assert resolved is not None
                out.append(resolved)
        return out

    return FilterGroup(all=resolve(tree.all), any=resolve(tree.any), none=resolve(tree.none))
