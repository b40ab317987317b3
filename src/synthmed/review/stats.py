"""Reader study statistics: can radiologists tell synthetic from real images, and do they rate them alike?

The positive class is "synthetic". Accuracy, sensitivity and specificity use each reader's first showing
of every item (repeats only measure intra-reader consistency); pooled figures treat all readers' first
showings as one sample. Every figure that cannot be computed (no answers, one class only, one reader, no
repeats) is None, never NaN and never an exception; invalid rows raise ValueError.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import binomtest, mannwhitneyu
from sklearn.metrics import cohen_kappa_score, roc_auc_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa
from statsmodels.stats.proportion import proportion_confint

CHOICES = ("real", "synthetic")
SCALES = ("realism", "anatomy", "slice_consistency")
POOLED = "pooled"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets read as the start of a formula
METHODS = {
    "positive_class": "synthetic (sensitivity: synthetic called synthetic; specificity: real called real)",
    "answers_used": "first showings only; repeated items measure intra-reader consistency",
    "pooled": "all readers' first showings as one sample, each answer counted as an independent observation",
    "confidence_interval": "Wilson score interval, 95%",
    "binomial_test": "two-sided exact binomial test of accuracy against 0.5",
    "auc": "ROC AUC of the confidence ratings: +confidence for 'synthetic', -confidence for 'real'",
    "inter_reader": "Fleiss' kappa for 3+ readers, Cohen's kappa for 2, on the items every reader answered",
    "intra_reader": "agreement and Cohen's kappa between the first and the repeated showing of an item",
    "likert_test": "Wilcoxon rank-sum (Mann-Whitney U) test, two-sided, real vs synthetic answers; u is the "
    "statistic of the real sample",
}


@dataclass(frozen=True)
class AnswerRow:
    reader: str  # username
    item: int  # StudyItem id: the same image for every reader
    truth: Literal["real", "synthetic"]
    choice: Literal["real", "synthetic"] | None  # None in rating-only studies
    confidence: int | None  # 1 (guess) .. 5 (certain)
    realism: int | None  # Likert 1..5
    anatomy: int | None  # Likert 1..5
    slice_consistency: int | None  # Likert 1..5, 3D only
    repeat: bool  # the second showing of a repeated item (intra-reader consistency)
    response_ms: int


def study_statistics(rows: Sequence[AnswerRow]) -> dict[str, Any]:
    """Per-reader and pooled accuracy, agreement, consistency, Likert summaries; JSON-serialisable."""
    for row in rows:
        _validate(row)
    by_reader: dict[str, list[AnswerRow]] = defaultdict(list)
    for row in rows:
        by_reader[row.reader].append(row)
    firsts = {reader: _first_showings(answers) for reader, answers in sorted(by_reader.items())}
    readers = [_summary(name, firsts[name], by_reader[name]) for name in firsts]
    pooled_firsts = [row for answers in firsts.values() for row in answers]
    return {
        "methods": METHODS,
        "answers": len(rows),
        "readers": readers,
        "pooled": _summary(POOLED, pooled_firsts, list(rows)),
        "inter_reader": _inter_reader(firsts),
    }


def _validate(row: AnswerRow) -> None:
    where = f"answer of reader {row.reader!r} to item {row.item}"
    if row.truth not in CHOICES:
        raise ValueError(f"{where}: truth must be 'real' or 'synthetic', got {row.truth!r}")
    if row.choice is not None and row.choice not in CHOICES:
        raise ValueError(f"{where}: choice must be 'real', 'synthetic' or None, got {row.choice!r}")
    for name in ("confidence", *SCALES):
        value = getattr(row, name)
        if value is not None and (not _is_int(value) or not 1 <= value <= 5):
            raise ValueError(f"{where}: {name} must be an integer 1..5 or None, got {value!r}")
    if not _is_int(row.response_ms) or row.response_ms < 0:
        raise ValueError(f"{where}: response_ms must be a non-negative integer, got {row.response_ms!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _first_showings(answers: list[AnswerRow]) -> list[AnswerRow]:
    firsts = [row for row in answers if not row.repeat]
    seen: set[int] = set()
    for row in firsts:
        if row.item in seen:
            raise ValueError(f"reader {row.reader!r} has two first showings of item {row.item}")
        seen.add(row.item)
    return firsts


def _summary(reader: str, firsts: list[AnswerRow], answers: list[AnswerRow]) -> dict[str, Any]:
    chosen = [row for row in firsts if row.choice is not None]
    synthetic = [row for row in chosen if row.truth == "synthetic"]
    real = [row for row in chosen if row.truth == "real"]
    correct = sum(row.choice == row.truth for row in chosen)
    return {
        "reader": reader,
        "n": len(chosen),
        "accuracy": _proportion(correct, len(chosen)),
        "sensitivity": _proportion(sum(row.choice == "synthetic" for row in synthetic), len(synthetic)),
        "specificity": _proportion(sum(row.choice == "real" for row in real), len(real)),
        "binomial_p": _binomial_p(correct, len(chosen)),
        "auc": _auc(chosen),
        "intra_reader": _intra_reader(answers),
        "likert": {scale: _likert(firsts, scale) for scale in SCALES},
        "median_response_ms": statistics.median(row.response_ms for row in answers) if answers else None,
    }


def _proportion(k: int, n: int) -> dict[str, Any]:
    if n == 0:
        return {"k": 0, "n": 0, "value": None, "ci_low": None, "ci_high": None}
    low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
    return {"k": k, "n": n, "value": k / n, "ci_low": float(low), "ci_high": float(high)}


def _binomial_p(k: int, n: int) -> float | None:
    return float(binomtest(k, n, 0.5, alternative="two-sided").pvalue) if n else None


def _auc(chosen: list[AnswerRow]) -> float | None:
    rated = [row for row in chosen if row.confidence is not None]
    truth = [row.truth == "synthetic" for row in rated]
    if len(set(truth)) < 2:
        return None
    scores = [row.confidence if row.choice == "synthetic" else -row.confidence for row in rated]
    return float(roc_auc_score(truth, scores))


def _kappa(a: list[str], b: list[str]) -> float | None:
    if not a:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one label only: kappa is undefined, reported as None
        return _finite(cohen_kappa_score(a, b, labels=list(CHOICES)))


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _intra_reader(answers: list[AnswerRow]) -> dict[str, Any]:
    """Pairs (first showing, repeat) of the same reader and item, both with a choice."""
    first = {(row.reader, row.item): row.choice for row in answers if not row.repeat}
    pairs = [
        (first[(row.reader, row.item)], row.choice)
        for row in answers
        if row.repeat and row.choice is not None and first.get((row.reader, row.item)) is not None
    ]
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    agreement = sum(x == y for x, y in pairs) / len(pairs) if pairs else None
    return {"pairs": len(pairs), "agreement": agreement, "kappa": _kappa(a, b)}


def _inter_reader(firsts: dict[str, list[AnswerRow]]) -> dict[str, Any]:
    """Agreement between readers on the items every reader with choices answered."""
    choices = {
        reader: {row.item: row.choice for row in rows if row.choice is not None}
        for reader, rows in firsts.items()
    }
    choices = {reader: answered for reader, answered in choices.items() if answered}
    common = sorted(set.intersection(*(set(c) for c in choices.values()))) if len(choices) > 1 else []
    result: dict[str, Any] = {"method": None, "readers": len(choices), "items": len(common), "kappa": None}
    if not common:
        return result
    table = [[c[item] for c in choices.values()] for item in common]
    if len(choices) == 2:
        result["method"] = "Cohen's kappa"
        result["kappa"] = _kappa([t[0] for t in table], [t[1] for t in table])
    else:
        result["method"] = "Fleiss' kappa"
        result["kappa"] = _fleiss(table)
    return result


def _fleiss(table: list[list[str]]) -> float | None:
    codes = np.array([[CHOICES.index(c) for c in row] for row in table])
    counts, _ = aggregate_raters(codes, n_cat=len(CHOICES))
    with np.errstate(divide="ignore", invalid="ignore"):  # all one category: kappa undefined -> None
        return _finite(fleiss_kappa(counts, method="fleiss"))


def _likert(firsts: list[AnswerRow], scale: str) -> dict[str, Any]:
    groups = {
        origin: [
            getattr(row, scale) for row in firsts if row.truth == origin and getattr(row, scale) is not None
        ]
        for origin in CHOICES
    }
    result: dict[str, Any] = {origin: _describe(values) for origin, values in groups.items()}
    result |= {"u": None, "p": None}
    if all(groups.values()):
        test = mannwhitneyu(groups["real"], groups["synthetic"], alternative="two-sided")
        result |= {"u": _finite(test.statistic), "p": _finite(test.pvalue)}
    return result


def _describe(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "mean": None, "median": None, "q1": None, "q3": None, "iqr": None}
    q1, median, q3 = (float(q) for q in np.percentile(values, [25, 50, 75]))
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "median": median,
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
    }


def statistics_csv(result: dict[str, Any]) -> str:
    """One row per reader plus "pooled"; inter-reader agreement fills the pooled row only; None is "n/a"."""
    rows = [*result["readers"], result["pooled"]]
    table = [
        _csv_row(summary, result["inter_reader"] if summary is result["pooled"] else None) for summary in rows
    ]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: _cell(value) for key, value in row.items()} for row in table)
    return out.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return "n/a"
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value  # a user name like "@cmd" must not run as a spreadsheet formula
    return value


def _csv_row(summary: dict[str, Any], inter: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"reader": summary["reader"], "n": summary["n"]}
    for name in ("accuracy", "sensitivity", "specificity"):
        prop = summary[name]
        row |= {f"{name}_k": prop["k"], f"{name}_n": prop["n"], name: prop["value"]}
        row |= {f"{name}_ci_low": prop["ci_low"], f"{name}_ci_high": prop["ci_high"]}
    row |= {"binomial_p": summary["binomial_p"], "auc": summary["auc"]}
    intra = summary["intra_reader"]
    row |= {
        "intra_pairs": intra["pairs"],
        "intra_agreement": intra["agreement"],
        "intra_kappa": intra["kappa"],
    }
    inter = inter or {}
    row |= {
        "inter_method": inter.get("method"),
        "inter_items": inter.get("items"),
        "inter_kappa": inter.get("kappa"),
    }
    for scale in SCALES:
        likert = summary["likert"][scale]
        for origin in CHOICES:
            for stat in ("n", "mean", "median", "iqr"):
                row[f"{scale}_{origin}_{stat}"] = likert[origin][stat]
        row[f"{scale}_p"] = likert["p"]
    row["median_response_ms"] = summary["median_response_ms"]
    return row
