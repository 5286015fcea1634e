"""Pure ranking steps: decays (against Elasticsearch's and Qdrant's formulas), boosts, contributions, facets,
collapse, rules and cursors. No engine here; the contract suite runs the same steps through every backend."""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qdrant_client import models
from qdrant_client.hybrid.formula import evaluate_expression

from clipfuse.errors import ConfigurationError, InvalidQuery
from clipfuse.plugin import fusion
from clipfuse.plugin.collapse import collapse, group_key
from clipfuse.plugin.cursor import CursorCodec, FrozenRanking, MemoryCursorStore, RedisCursorStore
from clipfuse.plugin.facets import count_facets
from clipfuse.plugin.ranking import (
    Candidate,
    apply_boosts,
    decay_score,
    field_function,
    payload_matches,
    signal_contributions,
)
from clipfuse.plugin.rules import hidden_ids, matching_rules, pins_of, place_pins
from clipfuse.schemas import FilterCondition, Hit, SearchRequest
from clipfuse.schemas.rules import load_rules, parse_rules
from clipfuse.schemas.search import DecayBoost, FieldBoost, FilterBoost, parse_boost, parse_date


# --------------------------------------------------------------------------- decays
def es_decay(function: str, value: float, origin: float, scale: float, offset: float, decay: float) -> float:
    """Elasticsearch's function_score decay formulas, transcribed from its reference page on their own."""
    distance = max(0.0, abs(value - origin) - offset)
    if function == "gauss":
        sigma_squared = -(scale**2) / (2 * math.log(decay))
        return math.exp(-(distance**2) / (2 * sigma_squared))
    if function == "exp":
        lam = math.log(decay) / scale
        return math.exp(lam * distance)
    s = scale / (1 - decay)
    return max(0.0, (s - distance) / s)


finite = st.floats(-1e6, 1e6, allow_nan=False)
positive = st.floats(1e-3, 1e5, allow_nan=False)


@settings(deadline=None)
@given(
    function=st.sampled_from(["gauss", "exp", "linear"]),
    value=finite,
    origin=finite,
    scale=positive,
    offset=st.floats(0, 1e4, allow_nan=False),
    decay=st.floats(0.01, 0.99),
)
def test_decays_are_elasticsearch_formulas(
    function: str, value: float, origin: float, scale: float, offset: float, decay: float
) -> None:
    ours = decay_score(function, value, origin=origin, scale=scale, offset=offset, decay=decay)
    assert ours == pytest.approx(es_decay(function, value, origin, scale, offset, decay), rel=1e-12, abs=1e-300)
    assert 0.0 <= ours <= 1.0


@pytest.mark.parametrize("function", ["gauss", "exp", "linear"])
def test_decay_is_decay_at_scale_past_offset_and_one_inside_offset(function: str) -> None:
    # Elasticsearch's definition: the score is `decay` at distance offset + scale, 1 within offset
    assert decay_score(function, 17.0, origin=5.0, scale=10.0, offset=2.0, decay=0.3) == pytest.approx(0.3)
    assert decay_score(function, -7.0, origin=5.0, scale=10.0, offset=2.0, decay=0.3) == pytest.approx(0.3)
    assert decay_score(function, 6.5, origin=5.0, scale=10.0, offset=2.0, decay=0.3) == 1.0


@given(
    function=st.sampled_from(["gauss", "exp", "linear"]),
    value=st.floats(-1e4, 1e4),
    origin=st.floats(-1e4, 1e4),
    scale=st.floats(0.01, 1e4),
    decay=st.floats(0.01, 0.99),
)
@settings(max_examples=200, deadline=None)
def test_decays_equal_qdrants_formula_expressions(
    function: str, value: float, origin: float, scale: float, decay: float
) -> None:
    """Qdrant's own evaluator of GaussDecay / ExpDecay / LinDecay expressions (qdrant-client local mode)."""
    params = models.DecayParamsExpression(x="price", target=origin, scale=scale, midpoint=decay)
    expression: Any = {
        "gauss": models.GaussDecayExpression(gauss_decay=params),
        "exp": models.ExpDecayExpression(exp_decay=params),
        "linear": models.LinDecayExpression(lin_decay=params),
    }[function]
    theirs = evaluate_expression(expression, 1, [], {"price": value}, {}, {})
    ours = decay_score(function, value, origin=origin, scale=scale, offset=0.0, decay=decay)
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)


def test_decay_rejects_a_zero_scale_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"decay boost on 'price': scale must be greater than 0"):
        DecayBoost(type="decay", field="price", origin=10, scale=0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        decay_score("gauss", 1, origin=0, scale=0, offset=0, decay=0.5)


def test_date_decays_use_durations() -> None:
    boost = DecayBoost(type="decay", field="created_at", origin="2025-01-31", scale="10d", offset="1d", decay=0.5)
    assert boost.on_dates and boost.scale_value == 10 * 86400 and boost.offset_value == 86400
    [candidate] = apply_boosts([("a", 1.0)], {"a": {"created_at": "2025-01-20"}}, [(boost, "fresh")])
    assert candidate.boosts[0].value == pytest.approx(0.5)  # 11 days = offset + scale
    with pytest.raises(ValueError, match="duration"):
        DecayBoost(type="decay", field="created_at", origin="now", scale=10)
    with pytest.raises(ValueError, match="neither a number, an ISO date nor 'now'"):
        DecayBoost(type="decay", field="created_at", origin="yesterday", scale="1d")
    assert parse_date("2025-01-31T12:00:00Z") == parse_date("2025-01-31T12:00:00") == 1738324800.0
    assert parse_date("31/01/2025") is None


# --------------------------------------------------------------------------- boosts
def test_field_functions() -> None:
    assert field_function("log1p", 9.0) == pytest.approx(math.log(10))
    assert field_function("log1p", -5.0) == 0.0
    assert field_function("sqrt", 16.0) == 4.0 and field_function("sqrt", -1) == 0.0
    assert field_function("linear", -2.5) == -2.5


def test_boosts_apply_to_the_window_normalised_score() -> None:
    ranking = [("a", 0.04), ("b", 0.03), ("c", 0.02)]
    payloads = {"a": {"popularity": 0}, "b": {"popularity": 100}, "c": {}}
    boost = FieldBoost(type="field", field="popularity", function="log1p", weight=0.5, missing=9.0)
    out = apply_boosts(ranking, payloads, [(boost, boost.label)])
    by_id = {c.id: c for c in out}
    assert by_id["a"].normalised == 1.0 and by_id["b"].normalised == pytest.approx(0.5) and by_id["c"].normalised == 0.0
    assert by_id["b"].score == pytest.approx(0.5 + 0.5 * math.log(101))
    assert by_id["c"].boosts[0].value is None and by_id["c"].score == pytest.approx(0.5 * math.log(10))
    assert [c.id for c in out] == ["b", "c", "a"]
    assert all(c.fused == dict(ranking)[c.id] for c in out)


def test_no_boosts_keep_the_fused_scores_and_order() -> None:
    out = apply_boosts([("b", 0.5), ("a", 0.5)], {}, [])
    assert [(c.id, c.score, c.normalised) for c in out] == [("b", 0.5, None), ("a", 0.5, None)]


def test_equal_final_scores_keep_the_fused_order() -> None:
    boost = FilterBoost(type="filter", filters=[FilterCondition(field="x", value=True)], weight=2.0)
    out = apply_boosts([("z", 0.3), ("a", 0.3), ("m", 0.1)], {"m": {"x": True}}, [(boost, "x")])
    assert [c.id for c in out] == ["m", "z", "a"]


@pytest.mark.parametrize(
    ("condition", "payload", "expected"),
    [
        (FilterCondition(field="sizes", op="eq", value="38"), {"sizes": ["37", "38"]}, True),
        (FilterCondition(field="sizes", op="ne", value="38"), {"sizes": ["37", "38"]}, False),
        (FilterCondition(field="sizes", op="ne", value="38"), {}, True),
        (FilterCondition(field="color", op="nin", value=["red"]), {}, True),
        (FilterCondition(field="color", op="in", value=["red", "blue"]), {"color": "blue"}, True),
        (FilterCondition(field="price", op="lte", value=10), {"price": 10.0}, True),
        (FilterCondition(field="price", op="lt", value=10), {"price": 10}, False),
        (FilterCondition(field="price", op="gt", value=10), {}, False),
        (FilterCondition(field="in_stock", op="eq", value=False), {"in_stock": 0}, False),
        (FilterCondition(field="in_stock", op="eq", value=False), {"in_stock": False}, True),
    ],
)
def test_payload_filters_follow_engine_semantics(
    condition: FilterCondition, payload: dict[str, Any], expected: bool
) -> None:
    assert payload_matches(payload, [condition]) is expected


def test_parse_boost_language() -> None:
    b = parse_boost("log1p(popularity)*0.1")
    assert isinstance(b, FieldBoost) and (b.field, b.function, b.weight) == ("popularity", "log1p", 0.1)
    f = parse_boost("in_stock=true:+0.1")
    assert isinstance(f, FilterBoost) and f.filters[0].value is True and f.weight == 0.1
    assert parse_boost("brand=Acme&in_stock=true:-0.2").filters[1].field == "in_stock"  # type: ignore[union-attr]
    d = parse_boost("gauss(created_at, origin=now, scale=30d, decay=0.4)*0.2")
    assert isinstance(d, DecayBoost) and d.on_dates and d.decay == 0.4 and d.weight == 0.2
    e = parse_boost("exp(price, origin=50, scale=20)")
    assert isinstance(e, DecayBoost) and e.origin == 50 and not e.on_dates
    with pytest.raises(InvalidQuery, match="scale must be greater than 0"):
        parse_boost("linear(price, origin=50, scale=0)")
    with pytest.raises(InvalidQuery, match="cannot read boost"):
        parse_boost("popularity + 1")


# --------------------------------------------------------------------------- contributions
lists_strategy = st.lists(
    st.lists(
        st.tuples(st.sampled_from([f"d{i}" for i in range(12)]), st.floats(-5, 5, allow_nan=False)),
        max_size=10,
    ),
    min_size=1,
    max_size=3,
)


@settings(deadline=None)
@given(lists=lists_strategy, method=st.sampled_from(["rrf", "linear", "zscore", "dbsf"]), data=st.data())
def test_signal_contributions_sum_to_the_fused_score(
    lists: list[list[tuple[str, float]]], method: str, data: Any
) -> None:
    ranked = [[fusion.Ranked(d, s) for d, s in sorted(items, key=lambda x: -x[1])] for items in lists]
    weights = data.draw(st.lists(st.floats(0, 3), min_size=len(ranked), max_size=len(ranked)))
    fused = fusion.fuse(method, ranked, k=60, weights=weights)  # type: ignore[arg-type]
    parts = signal_contributions(method, ranked, weights=weights, k=60)  # type: ignore[arg-type]
    for row in fused:
        assert sum(table.get(row.id, 0.0) for table in parts) == pytest.approx(row.score, abs=1e-9)


# --------------------------------------------------------------------------- facets
payload_strategy = st.fixed_dictionaries(
    {},
    optional={
        "brand": st.sampled_from(["Acme", "Orla", "Lumen"]),
        "sizes": st.lists(st.sampled_from(["37", "38", "39"]), max_size=4),
        "price": st.floats(0, 500, allow_nan=False),
        "in_stock": st.booleans(),
    },
)


@settings(deadline=None)
@given(payloads=st.lists(payload_strategy, max_size=30))
def test_facet_counts_equal_a_brute_force_count(payloads: list[dict[str, Any]]) -> None:
    fields: dict[str, Any] = {"brand": "keyword", "sizes": "keyword", "price": "number", "in_stock": "bool"}
    facets, stats = count_facets([[p] for p in payloads], fields, max_values=100)
    for name in ("brand", "sizes"):
        brute = Counter()
        for p in payloads:
            value = p.get(name)
            for item in set(value if isinstance(value, list) else [value] if value is not None else []):
                brute[item] += 1
        assert facets[name] == dict(brute)
        assert list(facets[name].values()) == sorted(facets[name].values(), reverse=True)
    assert facets["in_stock"] == dict(Counter(str(p["in_stock"]).lower() for p in payloads if "in_stock" in p))
    prices = [p["price"] for p in payloads if "price" in p]
    if prices:
        assert stats["price"].count == len(prices) and stats["price"].min == min(prices)
        assert stats["price"].sum == pytest.approx(math.fsum(prices))
        assert stats["price"].avg == pytest.approx(math.fsum(prices) / len(prices))
    else:
        assert "price" not in stats


def test_facets_count_groups_once_and_cap_values_with_a_stable_order() -> None:
    groups = [
        [{"color": "red"}, {"color": "blue"}, {"color": "red"}],
        [{"color": "blue"}],
        [{"color": "green"}],
        [{"color": "amber"}],
    ]
    facets, _ = count_facets(groups, {"color": "keyword"}, max_values=3)
    assert facets["color"] == {"blue": 2, "amber": 1, "green": 1}


# --------------------------------------------------------------------------- collapse
@settings(deadline=None)
@given(keys=st.lists(st.one_of(st.none(), st.sampled_from(["g1", "g2", "g3"]), st.just(["g1", "g2"])), max_size=25))
def test_collapse_keeps_every_document_once_in_rank_order(keys: list[Any]) -> None:
    ranking = [Candidate(id=f"d{i:02d}", fused=1.0 / (i + 1), score=1.0 / (i + 1)) for i in range(len(keys))]
    payloads = {c.id: ({"g": key} if key is not None else {}) for c, key in zip(ranking, keys, strict=True)}
    groups = collapse(ranking, payloads, "g")
    seen = [doc for g in groups for doc in g.ids]
    assert sorted(seen) == [c.id for c in ranking]
    heads = [g.head.id for g in groups]
    assert heads == sorted(heads)  # groups ordered by their best document
    assert len({g.key for g in groups if g.key is not None}) == sum(1 for g in groups if g.key is not None)
    for g in groups:
        assert all(group_key(payloads[v.id].get("g")) == g.key for v in g.variants)
        if g.key is None:
            assert not g.variants  # no value (or several values): stands alone
        assert [v.id for v in g.variants] == sorted(v.id for v in g.variants)


def test_a_pinned_variant_represents_its_group() -> None:
    ranking = [Candidate(id=d, fused=s, score=s) for d, s in [("a", 3), ("b", 2), ("c", 1)]]
    payloads = {"a": {"g": "x"}, "b": {"g": "y"}, "c": {"g": "x"}}
    groups = collapse(ranking, payloads, "g", heads=["c"])
    assert [(g.head.id, [v.id for v in g.variants]) for g in groups] == [("c", ["a"]), ("b", [])]


# --------------------------------------------------------------------------- rules
RULES = {
    "rules": [
        {
            "id": "boots",
            "conditions": [{"pattern": "Ankle Boots", "anchoring": "contains"}],
            "consequence": {"pin": [{"id": "p9", "position": 1}, {"id": "p8", "position": 3}], "hide": ["p2"]},
        },
        {
            "id": "exact",
            "conditions": [{"pattern": "red ankle boots"}],
            "consequence": {"pin": [{"id": "p7", "position": 1}], "hide": ["p9"]},
        },
        {
            "id": "shoes-page",
            "conditions": [{"filters": [{"field": "category", "value": "shoes"}]}],
            "consequence": {"boost": [{"filters": [{"field": "brand", "value": "Acme"}], "weight": -0.5}]},
        },
        {
            "id": "off",
            "enabled": False,
            "conditions": [{"pattern": "boots", "anchoring": "contains"}],
            "consequence": {"hide": ["p1"]},
        },
    ]
}


def test_rules_match_exact_phrase_and_filters() -> None:
    rules = parse_rules(RULES)
    shoes = [FilterCondition(field="category", value="shoes")]
    assert [r.id for r in matching_rules(rules, "cheap ankle-boots!", [])] == ["boots"]
    assert [r.id for r in matching_rules(rules, "RED  ankle boots", shoes)] == ["boots", "exact", "shoes-page"]
    assert [r.id for r in matching_rules(rules, "ankle", shoes)] == ["shoes-page"]
    assert matching_rules(rules, "boots ankle", []) == []


def test_hidden_beats_pinned_and_pins_take_free_positions() -> None:
    rules = parse_rules(RULES).rules[:2]
    hidden = hidden_ids(rules)
    assert hidden == {"p2", "p9"}
    pins = pins_of(rules, hidden)
    assert [(p.id, p.position, p.rule) for p in pins] == [("p8", 3, "boots"), ("p7", 1, "exact")]
    from clipfuse.plugin.collapse import singletons

    ranking = [Candidate(id=f"p{i}", fused=1.0, score=1.0) for i in (1, 3, 4, 7, 8)]
    placed = place_pins(singletons(ranking), pins)
    assert [g.head.id for g in placed] == ["p7", "p1", "p8", "p3", "p4"]
    assert placed[0].head.rule == "exact" and placed[1].head.rule is None


def test_pins_past_the_end_go_last_and_absent_pins_are_skipped() -> None:
    rules = parse_rules(
        {
            "rules": [
                {
                    "id": "r",
                    "conditions": [{"pattern": "x"}],
                    "consequence": {"pin": [{"id": "b", "position": 9}, {"id": "zz", "position": 1}]},
                }
            ]
        }
    )
    from clipfuse.plugin.collapse import singletons

    placed = place_pins(singletons([Candidate("a", 1, 1), Candidate("b", 0.5, 0.5)]), pins_of(rules.rules, set()))
    assert [g.head.id for g in placed] == ["a", "b"]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            {"rules": [{"id": "x", "conditions": [{"pattern": "boot*"}], "consequence": {"hide": ["a"]}}]},
            r"rule 'x' \(rules.0.conditions.0.pattern\): pattern 'boot\*' contains \*",
        ),
        ({"rules": [{"id": "x", "conditions": [{"pattern": " -- "}], "consequence": {"hide": ["a"]}}]}, "has no words"),
        (
            {"rules": [{"id": "x", "conditions": [{"pattern": "a"}], "consequence": {}}]},
            "needs 'pin', 'hide' or 'boost'",
        ),
        ({"rules": [{"id": "x", "conditions": [], "consequence": {"hide": ["a"]}}]}, "at least 1"),
        (
            {
                "rules": [
                    {"id": "x", "conditions": [{"pattern": "a"}], "consequence": {"hide": ["a"]}},
                    {"id": "x", "conditions": [{"pattern": "b"}], "consequence": {"hide": ["b"]}},
                ]
            },
            "used twice",
        ),
        (
            {
                "rules": [
                    {
                        "id": "x",
                        "conditions": [{"pattern": "a"}],
                        "consequence": {"pin": [{"id": "a", "position": 1}, {"id": "b", "position": 1}]},
                    }
                ]
            },
            "same position",
        ),
        (
            {"rules": [{"id": "x", "conditions": [{"pattern": "a"}], "consequence": {"hide": ["a"]}, "colour": 1}]},
            "Extra inputs",
        ),
    ],
)
def test_broken_rules_are_clear_errors(rules: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_rules(rules)


def test_rules_files_json_and_yaml(tmp_path: Any) -> None:
    (tmp_path / "r.yaml").write_text(
        "rules:\n  - id: a\n    conditions: [{pattern: boots}]\n    consequence: {hide: [p1]}\n"
    )
    assert load_rules(tmp_path / "r.yaml").rules[0].consequence.hide == ["p1"]
    (tmp_path / "r.json").write_text('[{"id": "a", "conditions": [{"pattern": "b"}], "consequence": {"hide": ["x"]}}]')
    assert load_rules(tmp_path / "r.json").rules[0].id == "a"
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        load_rules(tmp_path / "bad.json")
    (tmp_path / "bad.yaml").write_text("rules: [\n")
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        load_rules(tmp_path / "bad.yaml")
    with pytest.raises(ConfigurationError, match="cannot read rules file"):
        load_rules(tmp_path / "absent.yaml")


# --------------------------------------------------------------------------- cursors
def _frozen(n: int) -> FrozenRanking:
    return FrozenRanking(
        hits=[Hit(id=f"d{i}", rank=i + 1, score=1.0 / (i + 1)) for i in range(n)], k=2, fusion="rrf", fused_by="client"
    )


def test_cursor_round_trip_and_forgery() -> None:
    codec = CursorCodec(MemoryCursorStore(), secret="s3cret", ttl_s=60)
    key = codec.freeze(_frozen(5))
    token = codec.token(key, 2)
    frozen, same_key, offset = codec.load(token)
    assert same_key == key and offset == 2 and [h.id for h in frozen.hits] == [f"d{i}" for i in range(5)]
    version, k, _off, sig = token.split(".")
    with pytest.raises(InvalidQuery, match="signature does not match"):
        codec.load(f"{version}.{k}.0.{sig}")  # edited offset
    with pytest.raises(InvalidQuery, match="signature does not match"):
        CursorCodec(MemoryCursorStore(), secret="other").load(token)
    with pytest.raises(InvalidQuery, match="not a clipfuse cursor"):
        codec.load("hello")


def test_an_expired_cursor_says_so() -> None:
    codec = CursorCodec(MemoryCursorStore(), secret="s", ttl_s=0.05)
    token = codec.token(codec.freeze(_frozen(3)), 1)
    time.sleep(0.1)
    with pytest.raises(InvalidQuery, match="expired"):
        codec.load(token)


def test_memory_store_is_bounded() -> None:
    store = MemoryCursorStore(max_entries=2)
    for key in "abc":
        store.put(key, key.encode(), 60)
    assert store.get("a") is None and store.get("c") == b"c"


def test_redis_cursor_store_shares_rankings_between_codecs() -> None:
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    prefix = f"clipfuse-test:{uuid.uuid4().hex}:"
    try:
        first = CursorCodec(RedisCursorStore(client, prefix), secret="shared", ttl_s=30)
        second = CursorCodec(RedisCursorStore(client, prefix), secret="shared", ttl_s=30)
        token = first.token(first.freeze(_frozen(4)), 3)
        frozen, _key, offset = second.load(token)
        assert offset == 3 and frozen.hits[3].id == "d3"
        assert 0 < client.pttl(prefix + token.split(".")[1]) <= 30_000
    finally:
        for key in client.scan_iter(prefix + "*"):
            client.delete(key)
        client.close()


def test_a_cursor_request_takes_only_the_cursor_and_k() -> None:
    assert SearchRequest(cursor="c1.x.1.y", k=5).k == 5
    with pytest.raises(ValueError, match="drop filters, text"):
        SearchRequest(cursor="c1.x.1.y", text="boots", filters=[])


def test_payload_filter_trees_follow_all_any_none() -> None:
    from clipfuse.plugin.ranking import payload_matches_tree
    from clipfuse.schemas.search import FilterGroup

    red = FilterCondition(field="color", value="red")
    cheap = FilterCondition(field="price", op="lt", value=20)
    tree = FilterGroup(any=[red, cheap], none=[FilterCondition(field="brand", value="Acme")])
    assert payload_matches_tree({"color": "red", "price": 50}, tree)
    assert payload_matches_tree({"color": "blue", "price": 10}, tree)
    assert not payload_matches_tree({"color": "blue", "price": 50}, tree)
    assert not payload_matches_tree({"color": "red", "brand": "Acme"}, tree)
    assert not payload_matches({"color": "red"}, [cheap])
