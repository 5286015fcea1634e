"""clipfuse.eval: metrics against trec_eval (pytrec_eval), loaders, fusion runs, tuning, the demo query set."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from clipfuse.demo.catalog import generate_products
from clipfuse.eval.demo import grade, make_demo_queries
from clipfuse.eval.loaders import EvalDataError, EvalQuery, load_karpathy, load_qrels, load_queries
from clipfuse.eval.metrics import (
    METRICS,
    average_precision,
    evaluate,
    ndcg_at_k,
    ranking_from_scores,
    recall_at_k,
    reciprocal_rank,
)
from clipfuse.eval.runner import RunConfig, SignalLists, evaluate_configs, rank, standard_configs
from clipfuse.eval.tuning import split_queries, tune
from clipfuse.plugin.fusion import Ranked, fuse
from clipfuse.schemas import Weights

pytrec_eval = pytest.importorskip(
    "pytrec_eval", reason="the reference metrics need pytrec_eval (pip install -e .[dev])"
)

# our metric -> (trec_eval measure, how the run is cut before trec_eval sees it)
REFERENCE = {
    "recall@1": ("recall_1", None),
    "recall@5": ("recall_5", None),
    "recall@10": ("recall_10", None),
    "mrr@10": ("recip_rank", 10),  # trec_eval's recip_rank has no cut-off: give it the top 10
    "ndcg@10": ("ndcg_cut_10", None),
    "map": ("map", None),
}


def _random_case(seed: int) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, float]]]:
    """Graded qrels and a scored run with ties, unknown documents, empty rankings and unjudged queries."""
    rng = random.Random(seed)
    docs = [f"d{i:03d}" for i in range(60)]
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(25):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, 20))
        qrels[qid] = {d: rng.choice((0, 0, 1, 1, 2, 3)) for d in judged}
        if q % 7 == 3:
            run[qid] = {}  # empty ranking
            continue
        retrieved = rng.sample([*docs, "unknown-1", "unknown-2"], rng.randint(1, 45))
        # scores from a small set of values: many ties
        run[qid] = {d: float(rng.randint(0, 6)) for d in retrieved}
    qrels["q-none-relevant"] = {"d001": 0, "d002": 0}
    run["q-none-relevant"] = {"d001": 2.0, "d005": 1.0}
    run["q-not-judged"] = {"d001": 1.0}
    return qrels, run


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_metrics_match_trec_eval_on_random_graded_runs_with_ties(seed: int) -> None:
    qrels, scored = _random_case(seed)
    run = {q: ranking_from_scores(scores) for q, scores in scored.items()}
    ours = evaluate(run, qrels)
    assert ours.coverage.no_qrels == ["q-not-judged"]
    assert "q-none-relevant" in ours.coverage.no_relevant
    assert ours.coverage.empty_results  # the case has empty rankings
    for metric, (measure, cut) in REFERENCE.items():
        cut_run = {
            q: dict(sorted(s.items(), key=lambda i: (i[1], i[0]), reverse=True)[:cut]) if cut else s
            for q, s in scored.items()
        }
        reference = pytrec_eval.RelevanceEvaluator(qrels, {measure}).evaluate(cut_run)
        # trec_eval scores exactly the judged queries present in the run (also the empty and no-relevant ones)
        assert set(reference) == set(ours.per_query), metric
        for qid, figures in reference.items():
            assert ours.per_query[qid][metric] == pytest.approx(figures[measure], abs=1e-6), (metric, qid)
        reference_mean = sum(f[measure] for f in reference.values()) / len(reference)
        assert ours.means[metric] == pytest.approx(reference_mean, abs=1e-6), metric


def test_ties_follow_trec_eval_order_and_lists_are_scored_as_given() -> None:
    judgments = {"a": 2, "b": 0}
    # equal scores: trec_eval puts the larger document id first, so "b" (not relevant) comes first
    assert ranking_from_scores({"a": 1.0, "b": 1.0}) == ["b", "a"]
    assert reciprocal_rank(ranking_from_scores({"a": 1.0, "b": 1.0}), judgments) == 0.5
    # a ranked list is scored in its own order
    assert reciprocal_rank(["a", "b"], judgments) == 1.0


def test_metric_edge_cases() -> None:
    judged = {"a": 2, "b": 1, "c": 0}
    assert recall_at_k([], judged, 10) == 0.0
    assert ndcg_at_k([], judged) == 0.0
    assert average_precision(["x", "y"], judged) == 0.0  # unknown ids are not relevant
    assert recall_at_k(["a", "a", "b"], judged, 2) == 1.0  # a repeat counts once, at its first position
    assert ndcg_at_k(["a", "b"], judged) == pytest.approx(1.0)
    assert ndcg_at_k(["b", "a"], judged) < 1.0
    assert reciprocal_rank(["x"] * 0 + [f"n{i}" for i in range(10)] + ["a"], judged) == 0.0  # beyond 10
    # no relevant document: 0, counted (trec_eval) or skipped
    qrels = {"q1": {"a": 1}, "q2": {"a": 0}}
    run = {"q1": ["a"], "q2": ["a"]}
    assert evaluate(run, qrels).means["ndcg@10"] == pytest.approx(0.5)
    skipped = evaluate(run, qrels, no_relevant="skip")
    assert skipped.means["ndcg@10"] == pytest.approx(1.0)
    assert skipped.coverage.no_relevant == ["q2"] and skipped.coverage.evaluated == 1
    # judged queries never run are reported and not averaged
    partial = evaluate({"q1": ["a"]}, {"q1": {"a": 1}, "q9": {"b": 1}})
    assert partial.coverage.not_run == ["q9"] and partial.means["recall@1"] == 1.0
    assert any("not run" in line for line in partial.coverage.notes())
    # nothing to score: zeros, no crash
    assert evaluate({}, {}).means == dict.fromkeys(METRICS, 0.0)


def test_recall_curve_is_monotone_and_ends_at_recall_at_depth() -> None:
    qrels = {"q": {"a": 1, "b": 1, "c": 1, "d": 1}}
    ev = evaluate({"q": ["x", "a", "y", "b", "c"]}, qrels, depth=12)
    curve = ev.recall_curve
    assert len(curve) == 12
    assert all(x <= y for x, y in itertools.pairwise(curve))
    assert curve[0] == 0.0 and curve[1] == 0.25 and curve[9] == ev.means["recall@10"] == 0.75


# -- loaders ---------------------------------------------------------------------------


def test_load_qrels_trec_and_jsonl_agree(tmp_path: Path) -> None:
    trec = tmp_path / "qrels.tsv"
    trec.write_text("# comment\nq1 0 d1 2\nq1 0 d2 1\nq2\tQ0\td3\t0\n\n")
    jsonl = tmp_path / "qrels.jsonl"
    jsonl.write_text(
        '{"query_id": "q1", "doc_id": "d1", "grade": 2}\n'
        '{"query_id": "q1", "judgments": {"d2": 1}}\n'
        '{"query_id": "q2", "doc_id": "d3", "grade": 0}\n'
    )
    expected = {"q1": {"d1": 2, "d2": 1}, "q2": {"d3": 0}}
    assert load_qrels(trec) == expected
    assert load_qrels(jsonl) == expected
    bad = tmp_path / "bad.tsv"
    bad.write_text("q1 0 d1\n")
    with pytest.raises(EvalDataError, match="4 fields"):
        load_qrels(bad)
    bad.write_text("q1 0 d1 high\n")
    with pytest.raises(EvalDataError, match="integer"):
        load_qrels(bad)


def test_load_queries_kinds_and_paths(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    path.write_text(
        '{"id": "t", "text": "red striped t-shirt"}\n'
        '{"id": "i", "image": "imgs/q.jpg"}\n'
        '{"id": "c", "image": "https://example.com/q.jpg", "modifier": "in black", "group": "composed"}\n'
    )
    t, i, c = load_queries(path)
    assert (t.kind, i.kind, c.kind) == ("text", "image", "image+text")
    assert i.image == str((tmp_path / "imgs" / "q.jpg").resolve())
    assert c.text == "in black" and c.group == "composed"
    assert c.request(k=5).image is not None and c.request(k=5).image.url == "https://example.com/q.jpg"
    path.write_text('{"id": "x"}\n')
    with pytest.raises(EvalDataError, match="neither a text nor an image"):
        load_queries(path)
    path.write_text('{"id": "x", "text": "a"}\n{"id": "x", "text": "b"}\n')
    with pytest.raises(EvalDataError, match="twice"):
        load_queries(path)


def test_load_karpathy_flickr_format(tmp_path: Path) -> None:
    images = tmp_path / "flickr30k-images"
    images.mkdir()
    for name in ("1000092795.jpg", "10002456.jpg", "1000268201.jpg"):
        (images / name).write_bytes(b"not decoded by the loader")
    data = {
        "dataset": "flickr30k",
        "images": [
            {
                "filename": "1000092795.jpg",
                "imgid": 0,
                "split": "test",
                "sentids": [0, 1],
                "sentences": [
                    {"raw": "Two young guys with shaggy hair look at their hands.", "sentid": 0, "tokens": []},
                    {"raw": "", "tokens": ["two", "men", "outside"], "sentid": 1},
                ],
            },
            {"filename": "10002456.jpg", "imgid": 1, "split": "train", "sentences": [{"raw": "x", "sentid": 2}]},
            {
                "filename": "1000268201.jpg",
                "imgid": 2,
                "split": "test",
                "sentences": [{"raw": "A child.", "sentid": 3}],
            },
            {"filename": "missing.jpg", "imgid": 3, "split": "test", "sentences": [{"raw": "gone", "sentid": 4}]},
        ],
    }
    annotations = tmp_path / "dataset_flickr30k.json"
    annotations.write_text(json.dumps(data))
    split = load_karpathy(annotations, images, split="test")
    assert split.dataset == "flickr30k"
    assert [d["id"] for d in split.documents] == ["1000092795.jpg", "1000268201.jpg"]
    assert split.missing_images == ["missing.jpg"]
    assert [(q.id, q.text) for q in split.queries] == [
        ("s0", "Two young guys with shaggy hair look at their hands."),
        ("s1", "two men outside"),
        ("s3", "A child."),
    ]
    assert split.qrels == {"s0": {"1000092795.jpg": 1}, "s1": {"1000092795.jpg": 1}, "s3": {"1000268201.jpg": 1}}
    catalog = split.write_catalog(tmp_path / "catalog.jsonl")
    assert json.loads(catalog.read_text().splitlines()[0])["images"][0]["path"].endswith("1000092795.jpg")
    with pytest.raises(EvalDataError, match="no image of split"):
        load_karpathy(annotations, images, split="val")


# -- runs, fusion and tuning on fixed signal lists ---------------------------------------


def _signals() -> tuple[SignalLists, dict[str, dict[str, int]]]:
    """Three queries where each signal alone gets something wrong and fusion gets it right."""
    lists = {
        "q1": {
            "image": [Ranked("a", 0.9), Ranked("x", 0.8), Ranked("b", 0.3)],
            "text": [Ranked("x", 0.7), Ranked("a", 0.6)],
            "bm25": [Ranked("a", 5.0), Ranked("y", 4.0)],
        },
        "q2": {
            "image": [Ranked("y", 0.9), Ranked("b", 0.8)],
            "text": [Ranked("b", 0.5), Ranked("y", 0.4)],
            "bm25": [Ranked("b", 3.0)],
        },
        "q3": {"image": [Ranked("c", 0.9), Ranked("a", 0.2)], "text": [Ranked("a", 0.9), Ranked("c", 0.1)]},
    }
    qrels = {"q1": {"a": 2, "b": 1}, "q2": {"b": 2}, "q3": {"c": 1}}
    kinds = {"q1": "text", "q2": "text", "q3": "image"}
    return SignalLists(lists=lists, kinds=kinds, errors={}, candidates=100), qrels


def test_rank_uses_the_searcher_fusion_and_drops_zero_weight_signals() -> None:
    signals, _ = _signals()
    q1 = signals.lists["q1"]
    image_only = RunConfig("image", "rrf", Weights(image=1, text=0, bm25=0))
    assert rank(q1, image_only, 10) == ["a", "x", "b"]  # a single list keeps its order
    config = RunConfig("lin", "linear", Weights(image=2, text=0, bm25=1))
    expected = [f.id for f in fuse("linear", [q1["image"], q1["bm25"]], weights=[2.0, 1.0], limit=10)]
    assert rank(q1, config, 10) == expected
    # BM25 alone for a query without BM25 list (an image query): nothing can run
    assert rank(signals.lists["q3"], RunConfig("bm25", "rrf", Weights(image=0, text=0, bm25=1)), 10) == []


def test_standard_configs_names_and_weighted_rrf() -> None:
    plain = [c.name for c in standard_configs()]
    assert plain == ["image vector", "text vector", "BM25", "RRF k=60", "min-max linear", "z-score linear", "DBSF"]
    weighted = standard_configs(Weights(image=2, text=1, bm25=0.5), rrf_k=20)
    assert "weighted RRF k=20" in [c.name for c in weighted]
    assert all(c.rrf_k == 20 for c in weighted)


def test_config_prints_cli_and_python_that_round_trip() -> None:
    from clipfuse.schemas import SearchRequest  # noqa: F401  (used by eval below)

    config = RunConfig("t", "rrf", Weights(image=1, text=0.5, bm25=2), 20.0)
    assert config.cli_args() == "--fusion rrf --weights image=1,text=0.5,bm25=2 --rrf-k 20"
    request = eval(config.python('text="red dress"'))  # the printed Python is valid and means the same
    assert request.fusion == "rrf" and request.rrf_k == 20.0 and request.weights == Weights(image=1, text=0.5, bm25=2)
    assert "--rrf-k" not in RunConfig("z", "zscore", Weights()).cli_args()


def test_evaluate_configs_and_groups() -> None:
    signals, qrels = _signals()
    results = evaluate_configs(signals, qrels, standard_configs(), depth=10)
    by_name = {r.config.name: r for r in results}
    # BM25 cannot answer q3 (no BM25 list): reported, scored 0
    assert by_name["BM25"].no_signal == 1
    assert by_name["BM25"].evaluation.per_query["q3"]["ndcg@10"] == 0.0
    assert set(by_name["RRF k=60"].ndcg_by_kind) == {"text", "image"}
    assert by_name["image vector"].evaluation.per_query["q2"]["mrr@10"] == 0.5
    # fusion ranks b first for q2 (text and BM25 agree)
    assert by_name["RRF k=60"].evaluation.per_query["q2"]["mrr@10"] == 1.0


def test_split_is_stratified_disjoint_and_seeded() -> None:
    ids = [f"q{i}" for i in range(40)]
    kinds = {q: ("image" if i % 4 == 0 else "text") for i, q in enumerate(ids)}
    dev, test = split_queries(ids, kinds, dev_fraction=0.5, seed=3)
    assert set(dev).isdisjoint(test) and set(dev) | set(test) == set(ids)
    assert sum(kinds[q] == "image" for q in dev) == 5
    assert (dev, test) == split_queries(ids, kinds, dev_fraction=0.5, seed=3)
    assert dev != split_queries(ids, kinds, dev_fraction=0.5, seed=4)[0]
    with pytest.raises(ValueError, match="too few"):
        split_queries(["q1"], {}, dev_fraction=0.5)


def test_tune_respects_budget_and_never_reads_held_out_queries() -> None:
    signals, qrels = _signals()
    result = tune(signals, qrels, ["q1", "q2"], budget=25, seed=1, depth=10)
    assert len(result.trials) == 25
    assert len({(c.fusion, c.weights, c.rrf_k if c.fusion == "rrf" else None) for c, _ in result.trials}) == 25
    assert result.best_score == max(score for _, score in result.trials)
    # the held-out query's judgments do not change the choice
    poisoned = dict(qrels, q3={"a": 2, "zz": 1})
    again = tune(signals, poisoned, ["q1", "q2"], budget=25, seed=1, depth=10)
    assert (again.best.fusion, again.best.weights, again.best.rrf_k) == (
        result.best.fusion,
        result.best.weights,
        result.best.rrf_k,
    )


# -- the demo query set ------------------------------------------------------------------


def test_demo_queries_have_graded_judgments_from_ground_truth(tmp_path: Path) -> None:
    products = generate_products(150, 907, text_noise=1.0)
    queries, qrels = make_demo_queries(products, 40, seed=2, images_dir=tmp_path / "qimg")
    by_id = {p.id: p for p in products}
    assert len(queries) == 40 and set(qrels) == {q.id for q in queries}
    assert {q.group for q in queries} >= {"visual", "catalog", "mixed"}
    for query in queries:
        grades = qrels[query.id]
        assert 2 in grades.values(), query  # every query has an exact match
        for doc_id, g in grades.items():
            assert g in (1, 2)
            assert by_id[doc_id].category in (query.text or "") or query.kind == "image"
        if query.image is not None:
            assert Path(query.image).is_file()
    visual = next(q for q in queries if q.group == "visual")
    asked = {"category": next(p.category for p in products if p.id in qrels[visual.id])}
    assert grade(by_id[next(iter(qrels[visual.id]))], asked) == 2
    assert make_demo_queries(products, 40, seed=2)[0] != queries  # without images_dir: text queries only
    assert all(q.image is None for q in make_demo_queries(products, 40, seed=2)[0])


def test_grade_exact_partial_and_none() -> None:
    p = generate_products(1, 907)[0]
    asked = {"category": p.category, "color": p.color, "brand": p.brand}
    assert grade(p, asked) == 2
    assert grade(p, {**asked, "color": "x"}) == 1
    assert grade(p, {**asked, "color": "x", "brand": "y"}) == 0
    assert grade(p, {**asked, "category": "x"}) == 0


def test_eval_query_json_round_trip(tmp_path: Path) -> None:
    from clipfuse.eval.loaders import write_queries

    queries = [
        EvalQuery("a", text="red dress", group="visual"),
        EvalQuery("b", image=str(tmp_path / "x.jpg"), text="black"),
    ]
    path = write_queries(tmp_path / "q.jsonl", queries)
    assert load_queries(path) == queries


def test_noisy_catalog_option_keeps_ground_truth_and_degrades_texts() -> None:
    from clipfuse.demo.catalog import COLOR_SYNONYMS, noisy_texts

    clean = generate_products(300, 907)
    assert generate_products(300, 907, text_noise=0.0) == clean  # the default is the clean catalog
    noisy = generate_products(300, 907, text_noise=1.0)
    assert noisy == generate_products(300, 907, text_noise=1.0)  # deterministic
    fields = ("id", "category", "color", "pattern", "material", "brand", "price", "in_stock")
    assert [tuple(getattr(p, f) for f in fields) for p in noisy] == [
        tuple(getattr(p, f) for f in fields) for p in clean
    ]
    titles = [p.title.lower() for p in noisy]
    no_color = sum(p.color not in t for p, t in zip(noisy, titles, strict=True))
    synonyms = sum(any(s in t for s in COLOR_SYNONYMS[p.color]) for p, t in zip(noisy, titles, strict=True))
    assert 0.2 * len(noisy) < no_color < 0.8 * len(noisy)
    assert synonyms > 0.1 * len(noisy)
    assert any(" - " in p.title for p in noisy)  # other word order
    assert sum(p.caption == "" for p in noisy) > 0.3 * len(noisy)
    mislabelled = [p for p in noisy if p.caption and not p.caption.lower().replace("a ", "", 1).count(p.color)]
    assert 0 < len(mislabelled) < 0.2 * len(noisy)  # some listings describe another colour than the photo
    assert noisy_texts(clean[0], 907, 0.0) == (clean[0].title, clean[0].caption, clean[0].description)
