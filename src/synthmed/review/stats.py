"""Reader study statistics: can radiologists tell synthetic from real images, and do they rate them alike?

The positive class is "synthetic". Accuracy, sensitivity and specificity use each reader's first showing
of every item (repeats only measure intra-reader consistency); pooled figures treat all readers' first
showings as one sample. Every figure that cannot be computed (no answers, one class only, one reader, no
repeats) is None, never NaN and never an exception; invalid rows raise ValueError.

Besides the figures, the result reads them out: a one-line verdict per study, and warnings where a figure
rests on too few answers (e.g. a kappa on two shared items) to be read at all.
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

import krippendorff
import numpy as np
from scipy.stats import binomtest, mannwhitneyu
from sklearn.metrics import cohen_kappa_score, roc_auc_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa
from statsmodels.stats.proportion import proportion_confint

CHOICES = ("real", "synthetic")
SCALES = ("realism", "anatomy", "slice_consistency")
POOLED = "pooled"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets read as the start of a formula
# Below this many items rated by every reader an agreement figure's interval spans most of [-1, 1]; below
# this many answers an accuracy interval is over 40 percentage points wide.
MIN_SHARED = 10
MIN_ANSWERS = 20
ALPHA = 0.05
METHODS = {
    "positive_class": "synthetic (sensitivity: synthetic called synthetic; specificity: real called real)",
    "answers_used": "first showings only; repeated items measure intra-reader consistency",
    "pooled": "all readers' first showings as one sample, each answer counted as an independent observation",
    "confidence_interval": "Wilson score interval, 95%",
    "binomial_test": "two-sided exact binomial test of accuracy against 0.5",
    "auc": "ROC AUC of the confidence ratings: +confidence for 'synthetic', -confidence for 'real'",
    "inter_reader": "Fleiss' kappa for 3+ readers, Cohen's kappa for 2, on the items every reader answered",
    "likert_agreement": "per scale, Krippendorff's alpha (ordinal) on the items two or more readers rated; "
    "for 2 readers also Cohen's kappa with quadratic weights on the items both rated",
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
    result = {
        "methods": METHODS,
        "answers": len(rows),
        "readers": readers,
        "pooled": _summary(POOLED, pooled_firsts, list(rows)),
        "inter_reader": _inter_reader(firsts),
        "likert_agreement": {scale: _likert_agreement(firsts, scale) for scale in SCALES},
    }
    return result | {"verdict": verdict(result), "warnings": _warnings(result)}


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
    result: dict[str, Any] = {
        "method": None,
        "readers": len(choices),
        "shared_items": len(common),
        "kappa": None,
    }
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


def _likert_agreement(firsts: dict[str, list[AnswerRow]], scale: str) -> dict[str, Any]:
    """Agreement between readers on one Likert scale: Krippendorff's ordinal alpha over every item that two
    or more readers rated (it allows missing ratings), and for two readers the quadratic-weighted kappa."""
    ratings = {
        reader: {row.item: getattr(row, scale) for row in rows if getattr(row, scale) is not None}
        for reader, rows in firsts.items()
    }
    ratings = {reader: rated for reader, rated in ratings.items() if rated}
    items = sorted({item for rated in ratings.values() for item in rated})
    table = np.array([[rated.get(item, np.nan) for item in items] for rated in ratings.values()], dtype=float)
    pairable = (
        [i for i in range(len(items)) if np.sum(~np.isnan(table[:, i])) >= 2] if len(ratings) > 1 else []
    )
    shared = [i for i in pairable if not np.isnan(table[:, i]).any()]
    result: dict[str, Any] = {
        "readers": len(ratings),
        "rated_items": len(pairable),
        "shared_items": len(shared),
        "alpha": None,
        "weighted_kappa": None,
    }
    if pairable:
        result["alpha"] = _alpha(table[:, pairable])
    if len(ratings) == 2 and shared:
        a, b = (table[r, shared].astype(int) for r in range(2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one rating value only: kappa undefined, reported as None
            result["weighted_kappa"] = _finite(
                cohen_kappa_score(a, b, labels=list(range(1, 6)), weights="quadratic")
            )
    return result


def _alpha(table: np.ndarray) -> float | None:
    """Krippendorff's ordinal alpha of a readers x items table (NaN: not rated) on the 1..5 scale."""
    if len(np.unique(table[~np.isnan(table)])) < 2:
        return None  # every rating the same value: no variation to agree on, alpha undefined
    with np.errstate(divide="ignore", invalid="ignore"):
        value = krippendorff.alpha(table, value_domain=list(range(1, 6)), level_of_measurement="ordinal")
    return _finite(value)


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


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _interval(prop: dict[str, Any]) -> str:
    return f"[{prop['ci_low'] * 100:.0f}, {prop['ci_high'] * 100:.0f}]"


def verdict(result: dict[str, Any]) -> list[str]:
    """Plain-language reading of the pooled figures: one line for telling real from synthetic (a Turing
    study), one per rated Likert scale."""
    pooled = result["pooled"]
    lines = [_turing_verdict(pooled["accuracy"], pooled["binomial_p"])]
    lines += [_likert_verdict(scale, likert) for scale, likert in pooled["likert"].items()]
    return [line for line in lines if line]


def _turing_verdict(accuracy: dict[str, Any], p: float | None) -> str:
    if accuracy["value"] is None or p is None:
        return ""
    share = f"{accuracy['value'] * 100:.0f}% of trials {_interval(accuracy)}"
    told = f"Readers told real from synthetic in {share}"
    if p >= ALPHA:
        return f"{told}: not better than chance at {_p_text(p)}."
    if accuracy["value"] > 0.5:
        return f"{told}: better than chance at {_p_text(p)}; the synthetic images are recognisable."
    return (
        f"{told}: worse than chance at {_p_text(p)}; readers took synthetic for real and real for "
        "synthetic more often than not."
    )


def _likert_verdict(scale: str, likert: dict[str, Any]) -> str:
    if likert["p"] is None:
        return ""
    real, synthetic = likert["real"], likert["synthetic"]
    rated = (
        f"{scale.replace('_', ' ').capitalize()}: synthetic images rated a median {synthetic['median']:g} "
        f"(mean {synthetic['mean']:.1f}), real ones {real['median']:g} ({real['mean']:.1f})"
    )
    if likert["p"] >= ALPHA:
        return f"{rated}: no evidence of a difference at {_p_text(likert['p'])}."
    side = "lower" if synthetic["mean"] < real["mean"] else "higher"
    return f"{rated}: synthetic rated {side} at {_p_text(likert['p'])}."


def _warnings(result: dict[str, Any]) -> list[str]:
    """Figures that rest on too few answers to be read."""
    found = []
    n = result["pooled"]["n"]
    if 0 < n < MIN_ANSWERS:
        found.append(
            f"Only {n} first showings were answered real or synthetic: the accuracy's interval is wide; "
            "collect more answers before drawing a conclusion."
        )
    inter = result["inter_reader"]
    if inter["readers"] > 1 and inter["shared_items"] < MIN_SHARED:
        found.append(
            f"Only {inter['shared_items']} items were answered by every reader: the agreement between "
            f"readers (kappa) cannot be read on fewer than {MIN_SHARED}."
        )
    for scale, agreement in result["likert_agreement"].items():
        if agreement["readers"] > 1 and agreement["rated_items"] < MIN_SHARED:
            found.append(
                f"Only {agreement['rated_items']} items were rated for {scale.replace('_', ' ')} by two or "
                f"more readers: the agreement on this scale cannot be read on fewer than {MIN_SHARED}."
            )
    return found


def statistics_csv(result: dict[str, Any]) -> str:
    """One row per reader plus "pooled"; inter-reader agreement fills the pooled row only; None is "n/a"."""
    rows = [*result["readers"], result["pooled"]]
    table = [_csv_row(summary, result if summary is result["pooled"] else None) for summary in rows]
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


def _csv_row(summary: dict[str, Any], study: dict[str, Any] | None) -> dict[str, Any]:
    """A reader's row; ``study`` (the whole result) adds the agreement between readers to the pooled row."""
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
    inter = study["inter_reader"] if study else {}
    row |= {
        "inter_method": inter.get("method"),
        "inter_items": inter.get("shared_items"),
        "inter_kappa": inter.get("kappa"),
    }
    for scale in SCALES:
        likert = summary["likert"][scale]
        for origin in CHOICES:
            for stat in ("n", "mean", "median", "iqr"):
                row[f"{scale}_{origin}_{stat}"] = likert[origin][stat]
        row[f"{scale}_p"] = likert["p"]
        agreement = study["likert_agreement"][scale] if study else {}
        row[f"{scale}_alpha"] = agreement.get("alpha")
        row[f"{scale}_weighted_kappa"] = agreement.get("weighted_kappa")
    row["median_response_ms"] = summary["median_response_ms"]
    return row
