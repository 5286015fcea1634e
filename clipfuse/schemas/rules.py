"""Merchandising rules: a validated document, as Algolia's query rules are.

A rules file (JSON or YAML) holds a list of rules. A rule has conditions (any of
them matching is enough) and one consequence::

    rules:
      - id: boots-campaign
        conditions:
          - pattern: "ankle boots"      # the query's words are exactly these ("is"),
            anchoring: contains         # or contain them as a phrase ("contains")
          - filters: [{field: category, op: eq, value: ankle boots}]  # the search filters on this
        consequence:
          pin: [{id: p907-00012, position: 1}]
          hide: [p907-00044]
          boost: [{filters: [{field: brand, value: Acme}], weight: 0.2}]   # a negative weight buries

Words are compared case-insensitively after splitting on anything that is not a
letter or digit, so ``"Ankle-Boots!"`` is the words ``ankle boots``. Patterns are
plain words: wildcard or regular-expression characters are refused, so a pattern
means what it says. :func:`clipfuse.plugin.rules.apply_rules` applies a rule set
to a ranking; :meth:`clipfuse.plugin.HybridSearcher.load_rules` loads and checks a
file against the index (every id and filter field must exist).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clipfuse.errors import ConfigurationError
from clipfuse.schemas import limits as L
from clipfuse.schemas.search import BoostWeight, FilterCondition

__all__ = [
    "Pin",
    "Rule",
    "RuleBoost",
    "RuleCondition",
    "RuleConsequence",
    "RuleSet",
    "load_rules",
    "parse_rules",
    "words",
]

_WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)
_PATTERN_SYNTAX = set("*?[](){}|\\^$+")
DocId = Annotated[str, Field(min_length=1, max_length=L.MAX_ID_CHARS)]


def words(text: str) -> tuple[str, ...]:
    """The words of a query or pattern, as rules compare them (case-folded letters and digits)."""
    return tuple(_WORD_RE.findall(text.casefold()))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleCondition(_Model):
    """When a rule applies: the query's words (``is`` / ``contains`` a phrase), or the search's filters.

    ``pattern`` + ``anchoring="is"``: the query's words are exactly the pattern's;
    ``"contains"``: the pattern's words appear together, in order, in the query.
    ``filters``: each of these conditions is among the search's filters (a category page).
    Both given: both must hold.
    """

    pattern: Annotated[str, Field(min_length=1, max_length=L.MAX_RULE_PATTERN_CHARS)] | None = None
    anchoring: Literal["is", "contains"] = "is"
    filters: Annotated[list[FilterCondition], Field(max_length=L.MAX_FILTERS)] = []

    @field_validator("pattern")
    @classmethod
    def _plain_words(cls, value: str | None) -> str | None:
        if value is None:
            return None
        syntax = sorted(set(value) & _PATTERN_SYNTAX)
        if syntax:
            raise ValueError(
                f"pattern {value[:60]!r} contains {' '.join(syntax)}: patterns are plain words, matched exactly "
                "('is') or as a phrase ('contains'); remove the wildcard / regular-expression characters"
            )
        if not words(value):
            raise ValueError(f"pattern {value[:60]!r} has no words (letters or digits): it could never match")
        return value

    @model_validator(mode="after")
    def _something(self) -> RuleCondition:
        if self.pattern is None and not self.filters:
            raise ValueError("a condition needs a 'pattern', 'filters', or both")
        return self


class Pin(_Model):
    """Put document ``id`` at 1-based ``position`` of the ranking the shopper sees (after collapse)."""

    id: DocId
    position: Annotated[int, Field(ge=1, le=L.MAX_PIN_POSITION)]


class RuleBoost(_Model):
    """Add ``weight`` to the final score of documents matching every filter; a negative weight buries them."""

    filters: Annotated[list[FilterCondition], Field(min_length=1, max_length=L.MAX_FILTERS)]
    weight: BoostWeight


class RuleConsequence(_Model):
    pin: Annotated[list[Pin], Field(max_length=L.MAX_PINS_PER_RULE)] = []
    hide: Annotated[list[DocId], Field(max_length=L.MAX_HIDDEN_PER_RULE)] = []
    boost: Annotated[list[RuleBoost], Field(max_length=L.MAX_FILTERS)] = []

    @model_validator(mode="after")
    def _consistent(self) -> RuleConsequence:
        if not (self.pin or self.hide or self.boost):
            raise ValueError("a consequence needs 'pin', 'hide' or 'boost'")
        positions = [p.position for p in self.pin]
        if len(set(positions)) != len(positions):
            raise ValueError(f"two pins at the same position {sorted(positions)}: give each pin its own position")
        ids = [p.id for p in self.pin]
        if len(set(ids)) != len(ids):
            raise ValueError("a document is pinned twice: pin each id once")
        both = sorted(set(ids) & set(self.hide))
        if both:
            raise ValueError(f"{both} are both pinned and hidden: choose one")
        return self


class Rule(_Model):
    id: Annotated[str, Field(min_length=1, max_length=L.MAX_RULE_ID_CHARS, pattern=r"^[A-Za-z0-9_.:\-]+$")]
    description: Annotated[str, Field(max_length=1_000)] = ""
    enabled: bool = True
    #: any of them matching is enough
    conditions: Annotated[list[RuleCondition], Field(min_length=1, max_length=L.MAX_RULE_PATTERNS)]
    consequence: RuleConsequence


class RuleSet(_Model):
    """Rules in the order they are applied (a later pin at a taken position goes to the next free one)."""

    rules: Annotated[list[Rule], Field(max_length=L.MAX_RULES)] = []

    @model_validator(mode="after")
    def _unique_ids(self) -> RuleSet:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice: give each rule its own id")
            seen.add(rule.id)
        return self

    def ids(self) -> set[str]:
        """Every document id the rules pin or hide (to check that they exist)."""
        out: set[str] = set()
        for rule in self.rules:
            out.update(p.id for p in rule.consequence.pin)
            out.update(rule.consequence.hide)
        return out

    def fields(self) -> set[str]:
        """Every attribute field the rules filter on (to check that the index has them)."""
        out: set[str] = set()
        for rule in self.rules:
            for condition in rule.conditions:
                out.update(f.field for f in condition.filters)
            for boost in rule.consequence.boost:
                out.update(f.field for f in boost.filters)
        return out


def _describe(error: ValidationError, data: Any) -> str:
    parts = []
    for item in error.errors()[:5]:
        loc = list(item.get("loc", ()))
        where = ".".join(str(p) for p in loc)
        # name the rule by its id, not only by its position
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            try:
                rule_id = data["rules"][loc[1]].get("id")
            except (KeyError, IndexError, TypeError, AttributeError):
                rule_id = None
            if rule_id:
                where = f"rule {rule_id!r} ({where})"
        parts.append(f"{where}: {str(item.get('msg', 'invalid')).removeprefix('Value error, ')}")
    return "; ".join(parts)


def parse_rules(data: Any, *, source: str = "rules") -> RuleSet:
    """A :class:`RuleSet` from parsed JSON / YAML (a mapping with ``rules``, or the list itself)."""
    if isinstance(data, list):
        data = {"rules": data}
    if data is None:
        data = {"rules": []}
    try:
        return RuleSet.model_validate(data)
    except ValidationError as e:
        raise ConfigurationError(f"{source}: {_describe(e, data)}") from None


def load_rules(path: str | Path) -> RuleSet:
    """Read and validate a rules file: ``.json``, or ``.yaml`` / ``.yml`` (YAML is a superset of JSON)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > L.MAX_RULES_FILE_BYTES:
            raise ConfigurationError(
                f"rules file {path} is {size:,} bytes; at most MAX_RULES_FILE_BYTES={L.MAX_RULES_FILE_BYTES:,}"
            )
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigurationError(f"cannot read rules file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigurationError(f"rules file {path} is not UTF-8 text: {e}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except ValueError as e:  # json.JSONDecodeError
        raise ConfigurationError(f"rules file {path} is not valid JSON: {e}") from None
    except Exception as e:  # yaml.YAMLError
        if type(e).__module__.startswith("yaml"):
            raise ConfigurationError(f"rules file {path} is not valid YAML: {e}") from None
        raise
    return parse_rules(data, source=f"rules file {path}")
