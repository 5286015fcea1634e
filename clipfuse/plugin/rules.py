"""Pure application of merchandising rules (see :mod:`clipfuse.schemas.rules`) to a ranked window.

The searcher's order: the rules that match the query are found
(:func:`matching_rules`); their hidden ids leave the window before anything else
(a hidden document is never shown, not even as a variant or a pin); their boosts /
buries are added to the business boosts (:func:`rule_boosts`); after collapse
their pins are placed (:func:`place_pins`). A pinned document is shown only if it
passes the search's filters (the caller checks the ones outside the window).
Rules apply in file order; a pin at a position an earlier pin took goes to the
next free position; a document pinned twice keeps its first pin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clipfuse.plugin.collapse import Group
from clipfuse.schemas.rules import Pin, Rule, RuleCondition, RuleSet, words
from clipfuse.schemas.search import FilterBoost, FilterCondition

__all__ = ["PlacedPin", "condition_matches", "hidden_ids", "matching_rules", "pins_of", "place_pins", "rule_boosts"]


def _same_condition(a: FilterCondition, b: FilterCondition) -> bool:
    if a.field != b.field or a.op != b.op:
        return False
    if isinstance(a.value, list) and isinstance(b.value, list):
        return sorted(map(repr, a.value)) == sorted(map(repr, b.value))
    return a.value == b.value and type(a.value) is type(b.value)


def _contains(haystack: tuple[str, ...], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def condition_matches(condition: RuleCondition, text: str | None, filters: Sequence[FilterCondition]) -> bool:
    """Whether one condition holds for a query (its text and its checked filters)."""
    if condition.pattern is not None:
        query = words(text or "")
        pattern = words(condition.pattern)
        if condition.anchoring == "is" and query != pattern:
            return False
        if condition.anchoring == "contains" and not _contains(query, pattern):
            return False
    return all(any(_same_condition(wanted, given) for given in filters) for wanted in condition.filters)


def matching_rules(rules: RuleSet, text: str | None, filters: Sequence[FilterCondition]) -> list[Rule]:
    """The enabled rules any of whose conditions holds, in file order."""
    return [
        rule
        for rule in rules.rules
        if rule.enabled and any(condition_matches(c, text, filters) for c in rule.conditions)
    ]


def hidden_ids(rules: Sequence[Rule]) -> set[str]:
    return {doc for rule in rules for doc in rule.consequence.hide}


def rule_boosts(rules: Sequence[Rule]) -> list[tuple[FilterBoost, str, str]]:
    """``(boost, label, rule id)`` for every boost / bury of the matching rules."""
    out = []
    for rule in rules:
        for boost in rule.consequence.boost:
            as_boost = FilterBoost(type="filter", filters=boost.filters, weight=boost.weight)
            out.append((as_boost, f"rule {rule.id}: {as_boost.label}", rule.id))
    return out


@dataclass(frozen=True, slots=True)
class PlacedPin:
    id: str
    position: int
    rule: str


def pins_of(rules: Sequence[Rule], hidden: set[str]) -> list[PlacedPin]:
    """The pins to place, positions resolved (taken -> next free), hidden ids and repeats dropped."""
    taken: set[int] = set()
    seen: set[str] = set()
    out = []
    for rule in rules:
        pins: list[Pin] = sorted(rule.consequence.pin, key=lambda p: p.position)
        for pin in pins:
            if pin.id in hidden or pin.id in seen:
                continue
            position = pin.position
            while position in taken:
                position += 1
            taken.add(position)
            seen.add(pin.id)
            out.append(PlacedPin(pin.id, position, rule.id))
    return out


def place_pins(groups: Sequence[Group], pins: Sequence[PlacedPin]) -> list[Group]:
    """Move the groups whose representative is pinned to their positions (1-based; past the end: last).

    Pins whose document is not among ``groups`` (excluded by the filters, or missing)
    are skipped: a pin never shows a document the search would not.
    """
    position_of = {p.id: p for p in pins}
    pinned = [(position_of[g.head.id], g) for g in groups if g.head.id in position_of]
    out = [g for g in groups if g.head.id not in position_of]
    for pin, group in sorted(pinned, key=lambda item: item[0].position):
        group.head.rule = pin.rule
        out.insert(min(pin.position - 1, len(out)), group)
    return out
