"""Reader-study statistics against numbers computed independently here (textbook formulas, by hand)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from statistics import mean, median

import pytest
from scipy.stats import mannwhitneyu

from synthmed.review.stats import MIN_SHARED, AnswerRow, statistics_csv, study_statistics

Z95 = 1.959963984540054


def answer(
    reader: str, item: int, truth: str, choice: str | None, confidence: int | None = 3, **kw
) -> AnswerRow:
    fields = {
        "realism": None,
        "anatomy": None,
        "slice_consistency": None,
        "repeat": False,
        "response_ms": 1000,
    }
    return AnswerRow(reader, item, truth, choice, confidence, **(fields | kw))  # type: ignore[arg-type]


def wilson(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2)) / (1 + Z95**2 / n)
    return centre - half, centre + half


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p against 0.5: the distribution is symmetric, so twice the smaller tail."""
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def cohen(a: list[str], b: list[str]) -> float:
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    expected = sum((a.count(c) / n) * (b.count(c) / n) for c in ("real", "synthetic"))
    return (observed - expected) / (1 - expected)


def fleiss(counts: list[list[int]]) -> float:
    """Fleiss' kappa from a subjects x categories table of rater counts (Fleiss 1971)."""
    n_subjects, raters = len(counts), sum(counts[0])
    p_j = [sum(row[j] for row in counts) / (n_subjects * raters) for j in range(len(counts[0]))]
    p_i = [(sum(c * c for c in row) - raters) / (raters * (raters - 1)) for row in counts]
    p_bar, p_e = sum(p_i) / n_subjects, sum(p * p for p in p_j)
    return (p_bar - p_e) / (1 - p_e)


def test_reference_fleiss_matches_the_wikipedia_example() -> None:
    # Wikipedia "Fleiss' kappa" worked example: 10 subjects, 14 raters, 5 categories, kappa = 0.210.
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert fleiss(table) == pytest.approx(0.210, abs=5e-4)


# One reader, 10 items: 6 synthetic (4 called synthetic), 4 real (3 called real): 7 of 10 correct.
ONE_READER = [
    ("synthetic", "synthetic", 5),
    ("synthetic", "synthetic", 4),
    ("synthetic", "synthetic", 2),
    ("synthetic", "synthetic", 1),
    ("synthetic", "real", 1),
    ("synthetic", "real", 3),
    ("real", "real", 5),
    ("real", "real", 2),
    ("real", "real", 1),
    ("real", "synthetic", 2),
]


def test_accuracy_sensitivity_specificity_wilson_binomial_and_auc_by_hand() -> None:
    rows = [answer("r1", i, truth, choice, conf) for i, (truth, choice, conf) in enumerate(ONE_READER)]
    result = study_statistics(rows)
    json.dumps(result, allow_nan=False)  # JSON-serialisable, no NaN anywhere
    (reader,) = result["readers"]
    assert reader["reader"] == "r1" and reader["n"] == 10
    for name, k, n in (("accuracy", 7, 10), ("sensitivity", 4, 6), ("specificity", 3, 4)):
        low, high = wilson(k, n)
        assert reader[name] == {
            "k": k,
            "n": n,
            "value": pytest.approx(k / n),
            "ci_low": pytest.approx(low),
            "ci_high": pytest.approx(high),
        }
    assert reader["binomial_p"] == pytest.approx(binomial_two_sided(7, 10))  # 0.34375
    # AUC = P(score of a synthetic item > score of a real item), ties count one half.
    score = [conf if choice == "synthetic" else -conf for _, choice, conf in ONE_READER]
    syn = [s for s, (truth, _, _) in zip(score, ONE_READER, strict=True) if truth == "synthetic"]
    real = [s for s, (truth, _, _) in zip(score, ONE_READER, strict=True) if truth == "real"]
    wins = sum((a > b) + 0.5 * (a == b) for a in syn for b in real)
    assert reader["auc"] == pytest.approx(wins / (len(syn) * len(real)))
    assert result["pooled"]["accuracy"] == reader["accuracy"]  # one reader: pooled is the same
    assert result["inter_reader"] == {"method": None, "readers": 1, "shared_items": 0, "kappa": None}


def test_pooled_uses_every_readers_first_showings() -> None:
    rows = [answer("a", 1, "synthetic", "synthetic"), answer("a", 2, "real", "synthetic")]
    rows += [answer("b", 1, "synthetic", "synthetic"), answer("b", 2, "real", "real")]
    rows += [answer("b", 2, "real", "synthetic", repeat=True)]  # a repeat never counts towards accuracy
    pooled = study_statistics(rows)["pooled"]
    low, high = wilson(3, 4)
    assert pooled["accuracy"] == {
        "k": 3,
        "n": 4,
        "value": 0.75,
        "ci_low": pytest.approx(low),
        "ci_high": pytest.approx(high),
    }
    assert pooled["sensitivity"]["k"] == 2 and pooled["specificity"] == pytest.approx(
        {"k": 1, "n": 2, "value": 0.5, "ci_low": wilson(1, 2)[0], "ci_high": wilson(1, 2)[1]}
    )


def test_cohens_kappa_for_two_readers_on_common_items() -> None:
    a = ["synthetic", "synthetic", "real", "real", "synthetic", "real", "synthetic", "real"]
    b = ["synthetic", "real", "real", "real", "synthetic", "synthetic", "synthetic", "real"]
    truth = ["synthetic"] * 4 + ["real"] * 4
    rows = [answer("a", i, truth[i], a[i]) for i in range(8)]
    rows += [answer("b", i, truth[i], b[i]) for i in range(8)]
    rows += [answer("a", 99, "real", "real")]  # only one reader saw it: not a common item
    inter = study_statistics(rows)["inter_reader"]
    assert inter["method"] == "Cohen's kappa" and inter["readers"] == 2 and inter["shared_items"] == 8
    assert inter["kappa"] == pytest.approx(cohen(a, b))  # 0.5


def test_fleiss_kappa_for_four_readers_by_hand() -> None:
    choices = {  # item -> the four readers' choices
        0: "SSSS",
        1: "SSSR",
        2: "SSRR",
        3: "RRRR",
        4: "RRRS",
        5: "SRRR",
        6: "SSSR",
    }
    readers = "abcd"
    rows = [
        answer(reader, item, "synthetic", "synthetic" if c == "S" else "real")
        for item, letters in choices.items()
        for reader, c in zip(readers, letters, strict=True)
    ]
    counts = [[letters.count("R"), letters.count("S")] for letters in choices.values()]
    inter = study_statistics(rows)["inter_reader"]
    assert inter["method"] == "Fleiss' kappa" and inter["readers"] == 4 and inter["shared_items"] == 7
    assert inter["kappa"] == pytest.approx(fleiss(counts))


def quadratic_kappa(a: list[int], b: list[int], k: int = 5) -> float:
    """Cohen's weighted kappa, weights (i - j)^2 / (k - 1)^2, from the observed and chance tables."""
    n = len(a)
    observed = [
        [sum(x == i and y == j for x, y in zip(a, b, strict=True)) / n for j in range(1, k + 1)]
        for i in range(1, k + 1)
    ]
    expected = [[a.count(i) / n * b.count(j) / n for j in range(1, k + 1)] for i in range(1, k + 1)]
    weight = [[(i - j) ** 2 / (k - 1) ** 2 for j in range(k)] for i in range(k)]
    disagree = sum(weight[i][j] * observed[i][j] for i in range(k) for j in range(k))
    chance = sum(weight[i][j] * expected[i][j] for i in range(k) for j in range(k))
    return 1 - disagree / chance


def test_likert_agreement_weighted_kappa_for_two_readers_by_hand() -> None:
    a = [5, 4, 4, 3, 2, 1, 3, 5]
    b = [4, 4, 5, 3, 1, 2, 2, 5]
    rows = [answer("a", i, "real", None, None, realism=v) for i, v in enumerate(a)]
    rows += [answer("b", i, "real", None, None, realism=v) for i, v in enumerate(b)]
    rows += [answer("b", 50, "real", None, None, realism=1)]  # one rating only: no pair
    agreement = study_statistics(rows)["likert_agreement"]
    realism = agreement["realism"]
    assert realism["readers"] == 2 and realism["shared_items"] == 8 and realism["rated_items"] == 8
    assert realism["weighted_kappa"] == pytest.approx(quadratic_kappa(a, b))
    assert agreement["anatomy"] == {
        "readers": 0,
        "rated_items": 0,
        "shared_items": 0,
        "alpha": None,
        "weighted_kappa": None,
    }


# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the worked example with missing values:
# four observers, twelve units, values 1..5; published alpha: nominal 0.743, ordinal 0.815, interval 0.849.
KRIPPENDORFF_2011 = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}


def test_likert_agreement_krippendorff_alpha_matches_the_published_example() -> None:
    rows = [
        answer(reader, unit, "synthetic", None, None, anatomy=value)
        for reader, values in KRIPPENDORFF_2011.items()
        for unit, value in enumerate(values)
        if value is not None
    ]
    anatomy = study_statistics(rows)["likert_agreement"]["anatomy"]
    assert anatomy["readers"] == 4 and anatomy["rated_items"] == 11  # unit 12 has one value: unpairable
    assert anatomy["alpha"] == pytest.approx(0.815, abs=5e-4)
    assert anatomy["weighted_kappa"] is None  # two readers only
    assert anatomy["shared_items"] == 8  # units 2 to 9 have all four values


def test_verdict_reads_the_pooled_accuracy_and_likert_tests() -> None:
    # 29 of 50 correct: 58% of trials, Wilson [44, 71], two-sided binomial p = 0.32.
    rows = [answer("a", i, "synthetic", "synthetic" if i < 29 else "real") for i in range(50)]
    low, high = wilson(29, 50)
    p = binomial_two_sided(29, 50)
    (line,) = study_statistics(rows)["verdict"]
    assert line == (
        f"Readers told real from synthetic in 58% of trials [{low * 100:.0f}, {high * 100:.0f}]: "
        f"not better than chance at p = {p:.2g}."
    )
    assert study_statistics([answer("a", i, "real", "real") for i in range(12)])["verdict"] == [
        "Readers told real from synthetic in 100% of trials [76, 100]: better than chance at p < 0.001; "
        "the synthetic images are recognisable."
    ]
    rated = [answer("a", i, "real", None, None, realism=5) for i in range(6)]
    rated += [answer("a", 10 + i, "synthetic", None, None, realism=1 + i % 2) for i in range(6)]
    (line,) = study_statistics(rated)["verdict"]
    assert line.startswith("Realism: synthetic images rated a median 1.5 (mean 1.5), real ones 5 (5.0)")
    p = mannwhitneyu([5] * 6, [1, 2] * 3, alternative="two-sided").pvalue  # the rank-sum test's own figure
    assert line.endswith(f"synthetic rated lower at p = {p:.2g}.")


def test_warnings_for_few_answers_and_few_shared_items() -> None:
    rows = [answer("a", i, "real", "real", realism=3) for i in range(5)]
    rows += [answer("b", i, "real", "synthetic", realism=4) for i in range(3, 8)]
    found = study_statistics(rows)["warnings"]
    assert found[0].startswith("Only 10 first showings were answered")
    assert found[1].startswith("Only 2 items were answered by every reader")
    assert found[2].startswith("Only 2 items were rated for realism by two or more readers")
    many = [answer(r, i, "real", "real") for r in "ab" for i in range(MIN_SHARED)]
    assert study_statistics(many)["warnings"] == []


def test_intra_reader_consistency_from_repeats() -> None:
    first = ["synthetic", "real", "synthetic", "real", "synthetic"]
    again = ["synthetic", "real", "real", "real", "synthetic"]
    rows = [answer("a", i, "real", c) for i, c in enumerate(first)]
    rows += [answer("a", i, "real", c, repeat=True) for i, c in enumerate(again)]
    result = study_statistics(rows)
    intra = result["readers"][0]["intra_reader"]
    assert intra == {"pairs": 5, "agreement": pytest.approx(0.8), "kappa": pytest.approx(cohen(first, again))}
    assert result["pooled"]["intra_reader"] == intra
    assert result["readers"][0]["n"] == 5  # repeats are not first showings


def test_likert_summaries_and_rank_sum_test_by_hand() -> None:
    real_scores = [5, 4, 3]
    syn_scores = [1, 2]
    rows = [answer("a", i, "real", None, None, realism=v) for i, v in enumerate(real_scores)]
    rows += [answer("a", 10 + i, "synthetic", None, None, realism=v) for i, v in enumerate(syn_scores)]
    likert = study_statistics(rows)["pooled"]["likert"]
    realism = likert["realism"]
    assert realism["real"] == {
        "n": 3,
        "mean": pytest.approx(mean(real_scores)),
        "median": median(real_scores),
        "q1": 3.5,
        "q3": 4.5,
        "iqr": 1.0,
    }
    assert realism["synthetic"] == {"n": 2, "mean": 1.5, "median": 1.5, "q1": 1.25, "q3": 1.75, "iqr": 0.5}
    # U of the real sample: pairs where real > synthetic; every real score beats every synthetic one.
    assert realism["u"] == 6.0
    # Exact two-sided p (no ties): rank sums of all 10 ways to pick the real ranks from 1..5.
    observed = sum((4, 5, 3))
    sums = [sum(c) for c in itertools.combinations(range(1, 6), 3)]
    expected_mean = 3 * 6 / 2
    p = sum(abs(s - expected_mean) >= abs(observed - expected_mean) for s in sums) / len(sums)
    assert realism["p"] == pytest.approx(p)  # 0.2
    assert likert["anatomy"]["p"] is None and likert["anatomy"]["real"]["n"] == 0
    assert study_statistics(rows)["pooled"]["accuracy"]["value"] is None  # rating-only study


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [answer("a", 1, "real", "real")],  # one reader, one class, one answer
        [answer("a", i, "synthetic", "synthetic") for i in range(4)],  # all one class
        [answer(r, i, "real", "real") for r in "abc" for i in range(3)],  # full agreement on one category
        [answer(r, i, "real", "real") for r in "ab" for i in range(3)],
        [answer("a", 1, "real", "real"), answer("a", 1, "real", "real", repeat=True)],
        [answer("a", 1, "real", "real", repeat=True)],  # a repeat without its first showing
    ],
)
def test_degenerate_input_gives_none_not_nan_or_errors(rows: list[AnswerRow]) -> None:
    result = study_statistics(rows)
    json.dumps(result, allow_nan=False)
    parsed = list(csv.DictReader(io.StringIO(statistics_csv(result))))
    assert parsed[-1]["reader"] == "pooled"
    assert all(value not in ("nan", "", "None") for row in parsed for value in row.values())


def test_degenerate_values_are_none() -> None:
    empty = study_statistics([])
    assert empty["readers"] == [] and empty["pooled"]["accuracy"]["value"] is None
    assert empty["pooled"]["binomial_p"] is None and empty["pooled"]["median_response_ms"] is None
    same = study_statistics([answer(r, i, "real", "real") for r in "abc" for i in range(3)])
    assert same["inter_reader"]["kappa"] is None and same["pooled"]["auc"] is None
    assert same["pooled"]["sensitivity"]["value"] is None and same["pooled"]["specificity"]["value"] == 1.0


@pytest.mark.parametrize(
    "bad",
    [
        {"truth": "fake"},
        {"choice": "maybe"},
        {"confidence": 0},
        {"confidence": 6},
        {"confidence": 2.5},
        {"confidence": float("nan")},
        {"confidence": True},
        {"realism": 9},
        {"slice_consistency": 0},
        {"response_ms": -1},
    ],
)
def test_invalid_rows_raise_value_error(bad: dict) -> None:
    values = {
        "reader": "a",
        "item": 1,
        "truth": "real",
        "choice": "real",
        "confidence": 3,
        "realism": None,
        "anatomy": None,
        "slice_consistency": None,
        "repeat": False,
        "response_ms": 5,
    }
    with pytest.raises(ValueError, match=next(iter(bad))):
        study_statistics([AnswerRow(**(values | bad))])


def test_two_first_showings_of_one_item_are_refused() -> None:
    with pytest.raises(ValueError, match="two first showings"):
        study_statistics([answer("a", 1, "real", "real"), answer("a", 1, "real", "synthetic")])


def test_csv_parses_back_with_one_row_per_reader_plus_pooled() -> None:
    rows = [
        answer("bob", i, t, c, conf, realism=3, response_ms=100 * (i + 1))
        for i, (t, c, conf) in enumerate(ONE_READER)
    ]
    rows += [answer("amy", i, t, "synthetic", 3, realism=4) for i, (t, _, _) in enumerate(ONE_READER)]
    result = study_statistics(rows)
    parsed = list(csv.DictReader(io.StringIO(statistics_csv(result))))
    assert [row["reader"] for row in parsed] == ["amy", "bob", "pooled"]
    bob = parsed[1]
    assert int(bob["n"]) == 10 and float(bob["accuracy"]) == pytest.approx(0.7)
    assert float(bob["accuracy_ci_low"]) == pytest.approx(wilson(7, 10)[0])
    assert float(bob["median_response_ms"]) == 550.0
    assert bob["inter_kappa"] == "n/a" and parsed[2]["inter_method"] == "Cohen's kappa"
    assert float(parsed[2]["inter_kappa"]) == pytest.approx(result["inter_reader"]["kappa"])
    assert parsed[0]["sensitivity"] == "1.0" and parsed[0]["specificity"] == "0.0"
    assert parsed[2]["slice_consistency_p"] == "n/a"
    assert float(parsed[2]["realism_alpha"]) == pytest.approx(result["likert_agreement"]["realism"]["alpha"])
    assert bob["realism_alpha"] == "n/a"


def test_csv_text_cells_cannot_start_a_spreadsheet_formula() -> None:
    rows = [answer("@evil", 1, "real", "synthetic"), answer("-x", 1, "real", "synthetic")]
    parsed = list(csv.DictReader(io.StringIO(statistics_csv(study_statistics(rows)))))
    assert [row["reader"] for row in parsed] == ["'-x", "'@evil", "pooled"]
    assert float(parsed[2]["specificity"]) == 0.0  # numbers stay numbers
