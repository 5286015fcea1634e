"""Tests for clipfuse.plugin.fusion (pure score fusion)."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import pytest

from clipfuse.plugin.fusion import (
    Fused,
    FusionMethod,
    Ranked,
    dbsf,
    fuse,
    linear,
    qdrant_rrf_k,
    rrf,
)

try:  # optional: property tests with hypothesis when it is installed
    import hypothesis
    import hypothesis.strategies as st
except ImportError:  # pragma: no cover - depends on the environment
    hypothesis = None

qdrant_fusion = pytest.importorskip("qdrant_client.hybrid.fusion")
qdrant_models = pytest.importorskip("qdrant_client.http.models")


def R(*pairs: tuple[str, float]) -> list[Ranked]:
    return [Ranked(doc_id, score) for doc_id, score in pairs]


def ids(rows: Sequence[Fused]) -> list[str]:
    return [row.id for row in rows]


def by_id(rows: Sequence[Fused]) -> dict[str, Fused]:
    return {row.id: row for row in rows}


# --------------------------------------------------------------------------- #
# RRF
# --------------------------------------------------------------------------- #

A = R(("a", 0.9), ("b", 0.8), ("c", 0.7))
B = R(("b", 10.0), ("d", 5.0), ("a", 1.0))


def test_rrf_standard_values_k60() -> None:
    out = rrf([A, B])
    assert ids(out) == ["b", "a", "d", "c"]
    got = by_id(out)
    assert got["b"].score == pytest.approx(1 / 62 + 1 / 61, abs=1e-15)
    assert got["a"].score == pytest.approx(1 / 61 + 1 / 63, abs=1e-15)
    assert got["d"].score == pytest.approx(1 / 62, abs=1e-15)
    assert got["c"].score == pytest.approx(1 / 63, abs=1e-15)


def test_rrf_custom_k_and_k_zero() -> None:
    got = by_id(rrf([A, B], k=1))
    assert got["a"].score == pytest.approx(1 / 2 + 1 / 4)
    assert got["c"].score == pytest.approx(1 / 4)
    got0 = by_id(rrf([A, B], k=0))
    assert got0["a"].score == pytest.approx(1 / 1 + 1 / 3)
    assert got0["b"].score == pytest.approx(1 / 2 + 1 / 1)


def test_rrf_weighted_by_hand() -> None:
    # score = sum 1 / (rank / w + k)
    got = by_id(rrf([A, B], k=60, weights=[2.0, 0.5]))
    assert got["a"].score == pytest.approx(1 / (1 / 2 + 60) + 1 / (3 / 0.5 + 60))
    assert got["b"].score == pytest.approx(1 / (2 / 2 + 60) + 1 / (1 / 0.5 + 60))
    assert got["d"].score == pytest.approx(1 / (2 / 0.5 + 60))


def test_rrf_weight_zero_list_contributes_nothing() -> None:
    out = rrf([A, B], weights=[1.0, 0.0])
    got = by_id(out)
    assert got["a"].score == pytest.approx(1 / 61)
    assert got["b"].score == pytest.approx(1 / 62)
    assert got["c"].score == pytest.approx(1 / 63)
    # d only in the zero-weight list: kept with score 0, as Qdrant does
    assert got["d"].score == 0.0
    assert ids(out) == ["a", "b", "c", "d"]
    # the zero-weight list's raw scores and ranks are still reported
    assert got["a"].signal_scores == (0.9, 1.0)
    assert got["a"].signal_ranks == (1, 3)
    # negative weight behaves like zero
    assert [r.score for r in rrf([A, B], weights=[1.0, -3.0])] == [r.score for r in out]


def test_qdrant_rrf_k_mapping() -> None:
    assert qdrant_rrf_k(60) == 61
    assert qdrant_rrf_k(0.0) == 1
    assert qdrant_rrf_k(2) == 3
    with pytest.raises(ValueError, match="integer"):
        qdrant_rrf_k(1.5)
    with pytest.raises(ValueError, match=">= 0"):
        qdrant_rrf_k(-1)


def _random_lists(rng: random.Random, n_lists: int, pool: int = 30, max_len: int = 25) -> list[list[Ranked]]:
    universe = [f"p{i:02d}" for i in range(pool)]
    lists: list[list[Ranked]] = []
    for _ in range(n_lists):
        size = rng.randint(0, max_len)
        chosen = rng.sample(universe, size)
        scores = sorted(
            (rng.gauss(0.0, 1.0) * rng.choice([1.0, 10.0]) for _ in chosen),
            reverse=True,
        )
        lists.append([Ranked(doc_id, s) for doc_id, s in zip(chosen, scores, strict=True)])
    return lists


def _to_qdrant(lists: list[list[Ranked]]) -> list[list[object]]:
    return [[qdrant_models.ScoredPoint(id=h.id, version=0, score=h.score) for h in hits] for hits in lists]


def _assert_same_as_qdrant(ours: list[Fused], theirs: list[object]) -> None:
    assert len(ours) == len(theirs)
    # same ids with the same scores ...
    theirs_by_id = {p.id: p.score for p in theirs}  # type: ignore[attr-defined]
    assert set(theirs_by_id) == {r.id for r in ours}
    for row in ours:
        assert row.score == pytest.approx(theirs_by_id[row.id], abs=1e-9)
    # ... in the same order (ids may only differ within a group of tied scores)
    for mine, other in zip(ours, theirs, strict=True):
        assert mine.score == pytest.approx(other.score, abs=1e-9)  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", range(8))
def test_rrf_matches_qdrant_client(seed: int) -> None:
    rng = random.Random(seed)
    n_lists = rng.randint(1, 4)
    lists = _random_lists(rng, n_lists)
    k = rng.choice([0, 1, 2, 10, 60])
    weights = [rng.choice([1.0, 0.5, 2.0, 3.7, 0.0]) for _ in range(n_lists)] if seed % 2 else None
    ours = rrf(lists, k=k, weights=weights)
    theirs = qdrant_fusion.reciprocal_rank_fusion(
        _to_qdrant(lists),
        limit=10_000,
        ranking_constant_k=qdrant_rrf_k(k),
        weights=weights,
    )
    _assert_same_as_qdrant(ours, theirs)


# --------------------------------------------------------------------------- #
# DBSF
# --------------------------------------------------------------------------- #


def test_dbsf_by_hand() -> None:
    # list 0: mean 2, sample var (1 + 0 + 1) / 2 = 1 -> low -1, high 5
    # list 1: single hit -> 0.5 ; list 2: zero variance -> 0.5 each
    out = dbsf(
        [
            R(("a", 3.0), ("b", 2.0), ("c", 1.0)),
            R(("c", 7.0)),
            R(("d", 4.0), ("a", 4.0)),
        ]
    )
    got = by_id(out)
    assert got["a"].score == pytest.approx(4 / 6 + 0.5)
    assert got["b"].score == pytest.approx(3 / 6)
    assert got["c"].score == pytest.approx(2 / 6 + 0.5)
    assert got["d"].score == pytest.approx(0.5)
    # b and d tie at exactly 0.5: d's best rank is 1, b's is 2
    assert ids(out) == ["a", "c", "d", "b"]


def test_dbsf_tie_order_uses_best_rank() -> None:
    # b (rank 2 in list 0) and d (rank 1 in list 2) both score exactly 0.5
    out = dbsf([R(("a", 3.0), ("b", 2.0), ("c", 1.0)), R(("d", 4.0), ("e", 4.0))])
    got = by_id(out)
    assert got["b"].score == got["d"].score == got["e"].score == 0.5
    # d has best rank 1; b and e both have best rank 2 -> id order
    assert ids(out) == ["a", "d", "b", "e", "c"]


def test_dbsf_weights() -> None:
    out = dbsf([R(("a", 3.0), ("b", 2.0), ("c", 1.0)), R(("c", 7.0))], weights=[2.0, 1.0])
    got = by_id(out)
    assert got["a"].score == pytest.approx(2 * 4 / 6)
    assert got["c"].score == pytest.approx(2 * 2 / 6 + 0.5)


def test_dbsf_not_clipped_like_qdrant() -> None:
    # 11 hits, one outlier: |z| = 10 / sqrt(11) * ... > 3 sample sigmas -> > 1
    hits = R(("top", 100.0), *[(f"x{i}", 0.0) for i in range(10)])
    top = dbsf([hits])[0]
    assert top.id == "top"
    assert top.score > 1.0
    theirs = qdrant_fusion.distribution_based_score_fusion(_to_qdrant([hits]), limit=100)
    assert theirs[0].score == pytest.approx(top.score, abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_dbsf_matches_qdrant_client(seed: int) -> None:
    rng = random.Random(1000 + seed)
    lists = _random_lists(rng, rng.randint(1, 4))
    if seed == 0:
        lists.append([Ranked("single", 3.0)])
    if seed == 1:
        lists.append([Ranked("p00", 2.0), Ranked("p01", 2.0), Ranked("p02", 2.0)])
    ours = dbsf(lists)
    theirs = qdrant_fusion.distribution_based_score_fusion(_to_qdrant(lists), limit=10_000)
    _assert_same_as_qdrant(ours, theirs)
    assert fuse("dbsf", lists) == ours


# --------------------------------------------------------------------------- #
# linear: minmax / zscore
# --------------------------------------------------------------------------- #


def test_minmax_by_hand_and_tie_order() -> None:
    # list 0 -> a 1.0, b 0.5, c 0.0 ; list 1 -> c 1.0, a 0.0
    out = linear([R(("a", 10.0), ("b", 6.0), ("c", 2.0)), R(("c", 0.9), ("a", 0.5))])
    got = by_id(out)
    assert got["a"].score == pytest.approx(1.0)
    assert got["b"].score == pytest.approx(0.5)
    assert got["c"].score == pytest.approx(1.0)
    # a and c tie at 1.0 with best rank 1 each -> id order
    assert ids(out) == ["a", "c", "b"]
    assert (
        fuse(
            "linear",
            [R(("a", 10.0), ("b", 6.0), ("c", 2.0)), R(("c", 0.9), ("a", 0.5))],
        )
        == out
    )


def test_minmax_weighted() -> None:
    out = linear(
        [R(("a", 10.0), ("b", 6.0), ("c", 2.0)), R(("c", 0.9), ("a", 0.5))],
        weights=[0.3, 0.7],
    )
    got = by_id(out)
    assert got["a"].score == pytest.approx(0.3)
    assert got["b"].score == pytest.approx(0.15)
    assert got["c"].score == pytest.approx(0.7)
    assert ids(out) == ["c", "a", "b"]


def test_minmax_single_hit_all_equal_and_empty_list() -> None:
    out = linear([R(("a", 0.2)), [], R(("b", 5.0), ("c", 5.0), ("a", 5.0))])
    got = by_id(out)
    assert got["a"].score == pytest.approx(2.0)  # single hit -> 1.0, all-equal -> 1.0
    assert got["b"].score == pytest.approx(1.0)
    assert got["c"].score == pytest.approx(1.0)
    assert ids(out) == ["a", "b", "c"]
    assert got["a"].signal_scores == (0.2, None, 5.0)
    assert got["a"].signal_ranks == (1, None, 3)


def test_zscore_by_hand_and_std_zero() -> None:
    # list 0: mean 2, population std 1 -> a +1, b -1 ; list 1: std 0 -> 0 each
    lists = [R(("a", 3.0), ("b", 1.0)), R(("b", 5.0), ("c", 5.0))]
    out = linear(lists, normalization="zscore")
    got = by_id(out)
    assert got["a"].score == pytest.approx(1.0)
    assert got["b"].score == pytest.approx(-1.0)
    assert got["c"].score == pytest.approx(0.0)
    # documented quirk: absent c (0) outranks below-mean b
    assert ids(out) == ["a", "c", "b"]
    assert fuse("zscore", lists) == out


def test_zscore_population_std() -> None:
    # scores 4, 2, 0: mean 2, population std sqrt(8/3)
    out = by_id(linear([R(("a", 4.0), ("b", 2.0), ("c", 0.0))], normalization="zscore"))
    assert out["a"].score == pytest.approx(2 / math.sqrt(8 / 3))
    assert out["b"].score == pytest.approx(0.0)


# --------------------------------------------------------------------------- #
# Common behaviour
# --------------------------------------------------------------------------- #

METHODS: list[FusionMethod] = ["rrf", "linear", "dbsf", "zscore"]


@pytest.mark.parametrize("method", METHODS)
def test_duplicates_within_one_list_keep_first(method: FusionMethod) -> None:
    with_dup = [
        R(("a", 0.9), ("b", 0.8), ("a", 0.1), ("c", 0.05)),
        R(("c", 3.0), ("a", 1.0)),
    ]
    out = by_id(fuse(method, with_dup))
    assert out["a"].signal_scores == (0.9, 1.0)
    assert out["a"].signal_ranks == (1, 2)
    # ranks of the other hits are positions in the list as given
    assert out["c"].signal_ranks == (4, 1)
    assert len(out) == 3


def test_duplicates_rrf_counted_once() -> None:
    out = by_id(rrf([R(("a", 0.9), ("a", 0.8), ("b", 0.7))]))
    assert out["a"].score == pytest.approx(1 / 61)
    assert out["b"].score == pytest.approx(1 / 63)


def test_duplicates_do_not_enter_normalisation() -> None:
    # minmax over [10, 0] only (the duplicate's 5.0 is dropped)
    out = by_id(linear([R(("a", 10.0), ("b", 0.0), ("a", 5.0))]))
    assert out["a"].score == 1.0
    assert out["b"].score == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_limit(method: FusionMethod) -> None:
    full = fuse(method, [A, B])
    assert fuse(method, [A, B], limit=2) == full[:2]
    assert fuse(method, [A, B], limit=0) == []
    assert fuse(method, [A, B], limit=100) == full
    with pytest.raises(ValueError, match="limit"):
        fuse(method, [A, B], limit=-1)


@pytest.mark.parametrize("method", METHODS)
def test_signal_scores_and_ranks(method: FusionMethod) -> None:
    got = by_id(fuse(method, [A, B]))
    assert got["a"].signal_scores == (0.9, 1.0)
    assert got["a"].signal_ranks == (1, 3)
    assert got["c"].signal_scores == (0.7, None)
    assert got["c"].signal_ranks == (3, None)
    assert got["d"].signal_scores == (None, 5.0)
    assert got["d"].signal_ranks == (None, 2)


@pytest.mark.parametrize("method", METHODS)
def test_empty_inputs(method: FusionMethod) -> None:
    assert fuse(method, []) == []
    assert fuse(method, [[], []]) == []
    assert fuse(method, [[], []], weights=[1.0, 2.0]) == []


@pytest.mark.parametrize("method", METHODS)
def test_ties_deterministic_regardless_of_input_order(method: FusionMethod) -> None:
    # symmetric lists: x/y tie, and u/v tie
    l1 = R(("y", 2.0), ("u", 1.0))
    l2 = R(("x", 2.0), ("v", 1.0))
    first = fuse(method, [l1, l2])
    second = fuse(method, [l2, l1])
    assert ids(first) == ids(second) == ["x", "y", "u", "v"]
    assert [r.score for r in first] == [r.score for r in second]


@pytest.mark.parametrize("method", METHODS)
def test_bad_weights_length(method: FusionMethod) -> None:
    with pytest.raises(ValueError, match=r"3 weights for 2 lists"):
        fuse(method, [A, B], weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"1 weights for 2 lists"):
        fuse(method, [A, B], weights=[1.0])


@pytest.mark.parametrize("method", METHODS)
def test_non_finite_weight(method: FusionMethod) -> None:
    with pytest.raises(ValueError, match="weight 1"):
        fuse(method, [A, B], weights=[1.0, math.nan])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_score(method: FusionMethod, bad: float) -> None:
    lists = [A, R(("ok", 1.0), ("broken", bad))]
    with pytest.raises(ValueError, match=r"list 1.*'broken'"):
        fuse(method, lists)


def test_negative_or_nan_k() -> None:
    with pytest.raises(ValueError, match="k must be"):
        rrf([A, B], k=-1)
    with pytest.raises(ValueError, match="k must be"):
        fuse("rrf", [A, B], k=-0.5)
    with pytest.raises(ValueError, match="k must be"):
        rrf([A, B], k=math.nan)


def test_unknown_method_and_normalization() -> None:
    with pytest.raises(ValueError, match="unknown fusion method"):
        fuse("borda", [A, B])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown normalization"):
        linear([A, B], normalization="l2")  # type: ignore[arg-type]


def test_input_not_resorted() -> None:
    # ranks follow list order even if scores are not descending
    out = by_id(rrf([R(("low", 0.1), ("high", 0.9))]))
    assert out["low"].signal_ranks == (1,)
    assert out["low"].score > out["high"].score


# --------------------------------------------------------------------------- #
# Properties
# --------------------------------------------------------------------------- #


def _check_properties(method: FusionMethod, lists: list[list[Ranked]], limit: int | None) -> None:
    out = fuse(method, lists, limit=limit)
    union = {h.id for hits in lists for h in hits}
    out_ids = ids(out)
    assert len(out_ids) == len(set(out_ids))
    assert set(out_ids) <= union
    if limit is None:
        assert set(out_ids) == union
    else:
        assert len(out_ids) == min(limit, len(union))
    scores = [r.score for r in out]
    assert all(math.isfinite(s) for s in scores)
    assert all(a >= b for a, b in itertools.pairwise(scores))
    for row in out:
        assert len(row.signal_scores) == len(row.signal_ranks) == len(lists)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(20))
def test_random_properties(method: FusionMethod, seed: int) -> None:
    rng = random.Random(seed)
    lists = _random_lists(rng, rng.randint(0, 4), pool=15, max_len=12)
    limit = rng.choice([None, 0, 3, 50])
    _check_properties(method, lists, limit)


if hypothesis is not None:  # pragma: no branch
    _hit_lists = st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "c", "d", "e", "f"]),
                st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
            ),
            max_size=8,
        ),
        max_size=4,
    )

    @hypothesis.given(
        raw=_hit_lists,
        method=st.sampled_from(METHODS),
        limit=st.one_of(st.none(), st.integers(min_value=0, max_value=10)),
    )
    def test_hypothesis_properties(raw: list[list[tuple[str, float]]], method: FusionMethod, limit: int | None) -> None:
        lists = [[Ranked(i, s) for i, s in sorted(hits, key=lambda t: -t[1])] for hits in raw]
        _check_properties(method, lists, limit)

else:

    @pytest.mark.skip(reason="hypothesis is not installed")
    def test_hypothesis_properties() -> None:  # pragma: no cover
        pass
