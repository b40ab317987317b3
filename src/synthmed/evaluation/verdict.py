"""The report's first page: one summary table (each measure against its floor, pass or warn), the warnings,
and the ``headline`` object that report.json starts with.

The pass rules are the targets the project judges its generators by (docs/evaluation.md): FID and FRD at
most 1.5x their real-vs-real floor, recall at least 0.85x its floor per class, MS-SSIM within 0.03 of the
real holdout's, sharpness ratio (synthetic / real mean |Laplacian|) in [0.8, 1.25], C2ST accuracy at most
0.75, memorisation at most twice the holdout's own flag rate, label agreement within 0.10 of the real
holdout's, condition Dice at least 0.8x the real ceiling.
"""

from __future__ import annotations

from typing import Any

MIN_PER_CLASS = 20
FLOOR_FACTOR = 1.5
RECALL_FACTOR = 0.85
MSSSIM_MARGIN = 0.03
SHARPNESS_BAND = (0.8, 1.25)
C2ST_MAX = 0.75
LABEL_MARGIN = 0.10
DICE_FACTOR = 0.8
DEGENERATE_DICE = 0.2
SIDES = ("synthetic", "real_floor")


def _row(measure: str, synthetic: float | None, floor: float | None, ok: bool | None, rule: str) -> dict:
    verdict = "not computed" if ok is None else ("pass" if ok else "warn")
    return {"measure": measure, "synthetic": synthetic, "floor": floor, "verdict": verdict, "rule": rule}


def _value(entry: dict[str, Any] | None, key: str = "value") -> float | None:
    return None if not entry or entry.get(key) is None else float(entry[key])


def _floor_rows(section: dict[str, Any], key: str, name: str) -> list[dict[str, Any]]:
    rows = []
    for group, res in section.items():
        if not isinstance(res, dict) or any(
            "not_computed" in res.get(side, {"not_computed": 1}) for side in SIDES
        ):
            continue
        if key == "recall" or group == "all":
            syn, floor = (_value(res[side] if key == "value" else res[side].get(key)) for side in SIDES)
            factor = RECALL_FACTOR if key == "recall" else FLOOR_FACTOR
            if syn is None or floor is None:
                ok = None
            else:
                ok = syn >= factor * floor if key == "recall" else syn <= factor * floor
            rule = f">= {factor} x floor" if key == "recall" else f"<= {factor} x floor"
            rows.append(_row(f"{name} ({group})", syn, floor, ok, rule))
    return rows


def fidelity_groups(report: dict[str, Any]) -> dict[str, Any]:
    """The fidelity section by group; for volumes, the three views' means as the "all" group (2.5D)."""
    if "fid_25d" not in report:
        return report["fidelity"]
    sides = {
        side: {k: {"value": report[f"{k}_25d"][side]} for k in ("fid", "recall") if report[f"{k}_25d"][side]}
        for side in SIDES
    }
    return {"all": sides}


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Fidelity, diversity, sharpness, C2ST, privacy, label and condition fidelity against their floors."""
    fidelity = fidelity_groups(report)
    rows = _floor_rows(fidelity, "fid", "FID") + _floor_rows(report.get("frd", {}), "value", "FRD")
    rows += _floor_rows(fidelity, "recall", "recall")
    div = report["diversity"].get("all", {})
    if "synthetic" in div and "value" in div["synthetic"] and "value" in div["holdout"]:
        syn, floor = div["synthetic"]["value"], div["holdout"]["value"]
        rows.append(_row("MS-SSIM (all)", syn, floor, abs(syn - floor) <= MSSSIM_MARGIN, "within 0.03"))
    sharp = report.get("sharpness", {}).get("all", {})
    if "sharpness_ratio" in sharp:
        r = sharp["sharpness_ratio"]["value"]
        lo, hi = SHARPNESS_BAND
        rows.append(_row("sharpness ratio (all)", r, 1.0, lo <= r <= hi, f"in [{lo}, {hi}]"))
    cnn = report.get("c2st", {}).get("cnn", {}).get("all", {})
    if "accuracy" in cnn:
        rows.append(_row("C2ST accuracy (CNN)", cnn["accuracy"], 0.5, cnn["accuracy"] <= C2ST_MAX, "<= 0.75"))
    rows += _privacy_rows(report["privacy"]) + _label_rows(report["label_fidelity"])
    return rows + _condition_rows(report["condition_fidelity"])


def _privacy_rows(priv: dict[str, Any]) -> list[dict[str, Any]]:
    if "flagged_fraction" not in priv:
        return []
    floor = priv["holdout_flagged_fraction"]
    ok = priv["flagged_fraction"] <= max(2 * floor, 0.02)
    return [_row("likely copies (share)", priv["flagged_fraction"], floor, ok, "<= 2 x floor")]


def _label_rows(label: dict[str, Any]) -> list[dict[str, Any]]:
    if "synthetic" not in label:
        return []
    rows = []
    for c, entry in label["synthetic"].items():
        syn, real = _value(entry, "agreement"), _value(label["holdout"].get(c), "agreement")
        ok = None if syn is None or real is None else abs(syn - real) <= LABEL_MARGIN
        rows.append(_row(f"label agreement ({c})", syn, real, ok, "within 0.10 of real"))
    return rows


def _condition_dice(cond: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    entries = cond.get("labels", {"mask": cond}) if "not_computed" not in cond else {}
    return [
        (name, e["synthetic"]["dice"]["mean"], e["holdout_ceiling"]["dice"]["mean"])
        for name, e in entries.items()
        if "synthetic" in e
    ]


def _condition_rows(cond: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        _row(
            f"condition Dice ({name})",
            syn,
            ceiling,
            None if syn is None or ceiling is None else syn >= DICE_FACTOR * ceiling,
            ">= 0.8 x ceiling",
        )
        for name, syn, ceiling in _condition_dice(cond)
    ]


def warnings(report: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Everything a reader must know before trusting the figures, most important first."""
    out = [
        f"{r['measure']}: {r['synthetic']:.3f} against a floor of {r['floor']:.3f} fails the rule "
        f"'{r['rule']}'"
        for r in rows
        if r["verdict"] == "warn"
    ]
    return out + _data_warnings(report) + _stereotypy(report) + _degenerate(report)


def _data_warnings(report: dict[str, Any]) -> list[str]:
    out = []
    dup = report["privacy"].get("real_duplicates", {})
    if dup.get("count"):
        first = dup["pairs"][0]
        out.append(
            f"{dup['count']} real holdout images are near-copies of training images (closest: "
            f"{first['holdout_file']} and {first['train_file']}); they are not unseen, so the copy threshold "
            f"is calibrated without them ({dup['threshold_without']:.5f}; with them it would be "
            f"{dup['threshold_with_duplicates']:.5f})"
        )
    shift = report.get("reference", {}).get("given_holdout")
    if shift and shift.get("shifted"):
        out.append(
            f"the given holdout is shifted from the training distribution: its FID floor is "
            f"{shift['fid']:.2f} against {shift['fid_same_distribution']:.2f} for the run's own holdout; "
            "figures use the run's holdout"
        )
    for name, s in report["sets"].items():
        few = [f"{c} ({n})" for c, n in s["classes"].items() if n < MIN_PER_CLASS]
        if few:
            out.append(f"few images per class in the {name} set: {', '.join(few)}; intervals are wide")
    return out


def _stereotypy(report: dict[str, Any]) -> list[str]:
    out = []
    label = report["label_fidelity"]
    for c, entry in label.get("synthetic", {}).items():
        syn, real = _value(entry, "agreement"), _value(label["holdout"].get(c), "agreement")
        if syn is not None and real is not None and syn - real > LABEL_MARGIN:
            out.append(
                f"stereotypy: synthetic '{c}' images are classified as '{c}' {100 * syn:.0f}% of the time, "
                f"real ones {100 * real:.0f}%: the generator may draw caricatures of the class"
            )
    for group, div in report["diversity"].items():
        syn, real = div.get("synthetic", {}), div.get("holdout", {})
        if "ci95" in syn and "ci95" in real and syn["ci95"][0] > real["ci95"][1] + MSSSIM_MARGIN:
            out.append(
                f"stereotypy: synthetic images of '{group}' are more alike than real ones "
                f"(MS-SSIM {syn['value']:.3f} vs {real['value']:.3f}): too little diversity"
            )
    return out


def _degenerate(report: dict[str, Any]) -> list[str]:
    out = [
        f"condition fidelity ({name}) is meaningless here: the segmenter reaches Dice {ceiling:.3f} on real "
        "holdout images (the ceiling); use a larger image_size or more segmenter steps"
        for name, _, ceiling in _condition_dice(report["condition_fidelity"])
        if ceiling is not None and ceiling < DEGENERATE_DICE
    ]
    cnn = report.get("c2st", {}).get("cnn", {}).get("all", {})
    if "ci95" in cnn and cnn["ci95"][1] - cnn["ci95"][0] > 0.2:
        out.append(f"C2ST: {cnn['n']} images give an interval wider than 0.2; add images to tell")
    fid = fidelity_groups(report).get("all", {})
    syn, floor = fid.get("synthetic", {}).get("fid", {}), fid.get("real_floor", {}).get("fid", {})
    if syn.get("ci95") and floor.get("value") is not None:
        half = (syn["ci95"][1] - syn["ci95"][0]) / 2
        if half > abs(syn["value"] - floor["value"]):
            out.append(
                f"FID {syn['value']:.2f} differs from its floor {floor['value']:.2f} by less than its own "
                f"interval's half-width ({half:.2f}): the difference is noise"
            )
    return out


def headline(report: dict[str, Any], warning_list: list[str]) -> dict[str, Any]:
    """The figures a reader looks at first ("all" group; CNN C2ST)."""
    fid = fidelity_groups(report).get("all", {})
    frd = report.get("frd", {}).get("all", {})
    cnn = report.get("c2st", {}).get("cnn", {}).get("all", {})
    sharp = report.get("sharpness", {}).get("all", {})

    def pick(section: dict[str, Any], side: str, key: str | None) -> float | None:
        entry = section.get(side, {})
        return _value(entry.get(key) if key else entry)

    return {
        "c2st_accuracy": cnn.get("accuracy"),
        "c2st_ci95": cnn.get("ci95"),
        "sharpness_ratio": _value(sharp.get("sharpness_ratio")),
        "fid": pick(fid, "synthetic", "fid"),
        "fid_floor": pick(fid, "real_floor", "fid"),
        "recall": pick(fid, "synthetic", "recall"),
        "recall_floor": pick(fid, "real_floor", "recall"),
        "frd": pick(frd, "synthetic", None),
        "frd_floor": pick(frd, "real_floor", None),
        "warnings": warning_list,
    }


def finish(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with ``headline`` and ``summary`` first."""
    rows = summary_rows(report)
    return {"headline": headline(report, warnings(report, rows)), "summary": rows} | report
