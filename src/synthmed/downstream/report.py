"""results.csv (one row per arm x ratio x real fraction x seed) and report.html with its plots."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt

RUN_FIELDS = [
    "arm",
    "label",
    "ratio",
    "weight",
    "real_fraction",
    "seed",
    "n_real",
    "n_synthetic",
    "n_copies",
    "val",
]


def write_csv(results: dict[str, Any], path: Path) -> None:
    metrics = list(results["runs"][0]["metrics"]) if results["runs"] else []
    header = list(RUN_FIELDS)
    for m in metrics:
        header += [
            m,
            f"{m}_ci_low",
            f"{m}_ci_high",
            f"{m}_vs_real",
            f"{m}_vs_real_ci_low",
            f"{m}_vs_real_ci_high",
        ]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for run in results["runs"]:
            row = [run.get(k) for k in RUN_FIELDS]
            for m in metrics:
                row += _cells(run["metrics"][m]) + _cells((run["vs_real"] or {}).get(m))
            writer.writerow(row)


def _cells(entry: dict[str, Any] | None) -> list[Any]:
    if entry is None:
        return ["", "", ""]
    ci = entry["ci95"] or ["", ""]
    return [entry["value"], *ci]


def _errorbar(ax: Any, xs: list[float], entries: list[dict[str, Any]], label: str) -> None:
    ys = [e["value"] if e["value"] is not None else float("nan") for e in entries]
    err = [
        [y - e["ci95"][0] if e["ci95"] else 0 for y, e in zip(ys, entries, strict=True)],
        [e["ci95"][1] - y if e["ci95"] else 0 for y, e in zip(ys, entries, strict=True)],
    ]
    ax.errorbar(xs, ys, yerr=[[max(v, 0) for v in side] for side in err], marker="o", capsize=3, label=label)


def plot_gain_vs_ratio(pooled: list[dict[str, Any]], metric: str, path: Path) -> None:
    """Paired gain over real-only (mean over seeds, 95% CI) against the ratio: one line per ratio arm
    (count-matched controls and synthetic arms, each synthetic loss weight) and real fraction."""
    fig, ax = plt.subplots(figsize=(6, 4))
    lines: dict[str, list[dict[str, Any]]] = {}
    for p in pooled:
        if p["ratio"] is not None and p["vs_real"] is not None:
            name = p["arm"] + (f" w{p['weight']:g}" if p["weight"] is not None else "")
            lines.setdefault(f"{name} (real {p['real_fraction']:g})", []).append(p)
    for label, pts in sorted(lines.items()):
        pts.sort(key=lambda p: p["ratio"])
        _errorbar(ax, [p["ratio"] for p in pts], [p["vs_real"][metric] for p in pts], label)
    ax.axhline(0, c="black", lw=0.8)
    ax.set_xscale("log", base=2)
    _finish(ax, "images added per reference image (log2 axis)", f"gain in {metric} vs real-only", path, fig)


def gain_points(pooled: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """(arm label, real fraction, gain vs real-only) of every arm with a real fraction and a reference."""
    return [
        {"label": p["label"], "real_fraction": p["real_fraction"], "gain": p["vs_real"][metric]}
        for p in pooled
        if p["real_fraction"] is not None and p["vs_real"] is not None
    ]


def plot_gain_vs_fraction(points: list[dict[str, Any]], metric: str, path: Path) -> None:
    """Gain over real-only against the real fraction, one line per arm; ``points`` from gain_points, possibly
    gathered from several benchmark runs (one per regime)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in sorted({p["label"] for p in points}):
        pts = sorted((p for p in points if p["label"] == label), key=lambda p: p["real_fraction"])
        _errorbar(ax, [p["real_fraction"] for p in pts], [p["gain"] for p in pts], label)
    ax.axhline(0, c="black", lw=0.8)
    _finish(ax, "fraction of real training images", f"gain in {metric} vs real-only", path, fig)


def _finish(ax: Any, xlabel: str, ylabel: str, path: Path, fig: Any) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{ylabel}\n(mean over seeds, 95% CI)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # beside the axes: a legend of two dozen arms would hide the lines
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _fmt(entry: dict[str, Any] | None) -> str:
    if not entry or entry["value"] is None:
        return "-"
    ci = entry["ci95"]
    return f"{entry['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _test_cell(test: dict[str, Any] | None) -> str:
    if not test:
        return "<td>-</td>"
    ci = test.get("ci95_adjusted")
    ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return f"<td>p {test['p']:.3f}, Holm {test['p_holm']:.3f}{ci_text}</td>"


def _table(pooled: list[dict[str, Any]], metric: str) -> str:
    head = (
        "<tr><th>arm</th><th>kind</th><th>real fraction</th><th>validation</th>"
        f"<th>{html.escape(metric)}</th><th>&Delta; vs real</th><th>Holm vs real (adjusted CI)</th>"
        "<th>&Delta; vs strongest control</th><th>Holm vs control (adjusted CI)</th></tr>"
    )
    rows = []
    for p in pooled:
        f = p["real_fraction"]
        rows.append(
            f"<tr><th>{html.escape(p['label'])}</th><td>{p['kind']}</td>"
            f"<td>{f if f is not None else '-'}</td><td>{p['val']['mean']:.3f}</td>"
            f"<td>{_fmt(p['metrics'][metric])}</td><td>{_fmt((p['vs_real'] or {}).get(metric))}</td>"
            f"{_test_cell(p['tests'].get('vs_real'))}"
            f"<td>{_fmt((p['vs_best_control'] or {}).get(metric))}</td>"
            f"{_test_cell(p['tests'].get('vs_best_control'))}</tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def write_html(results: dict[str, Any], out: Path) -> Path:
    metric = results["primary_metric"]
    plot_gain_vs_ratio(results["pooled"], metric, out / "gain_vs_ratio.png")
    plot_gain_vs_fraction(gain_points(results["pooled"], metric), metric, out / "gain_vs_fraction.png")
    leak = results["leak_check"]
    leak_text = (
        "passed: no test image matches an image of the generator's train/val split (decoded pixels compared)"
        if leak["checked"]
        else leak["reason"]
    )
    unseen = "the generator never saw" if leak["checked"] else "(whether the generator saw them is unknown)"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>synthmed augmentation benchmark</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px}}</style></head><body>
<h1>Augmentation benchmark ({html.escape(results["task"])})</h1>
<p>Test set: real images {unseen}. Leak check: {html.escape(leak_text)}.</p>
<h2>Headline</h2><pre>{html.escape(json.dumps(results["headline"], indent=1))}</pre>
{"".join(f"<p><b>Warning:</b> {html.escape(w)}</p>" for w in results["warnings"])}
<p>Strongest control and best synthetic arm per real fraction (chosen on the real validation split):
{html.escape(json.dumps(results["choice"]))}</p>
<h2>Mean over seeds, 95% bootstrap CI (test images and seeds resampled, paired)</h2>
<p>&Delta;: paired difference; Holm: p-values corrected across the synthetic arms (one family per
reference); adjusted CI: simultaneous 95% over the family. All metrics are in results.json.</p>
{_table(results["pooled"], metric)}
<h2>Gain in {html.escape(metric)} vs ratio</h2><img src="gain_vs_ratio.png">
<h2>Gain in {html.escape(metric)} vs real fraction</h2><img src="gain_vs_fraction.png">
<h2>Protocol and settings</h2><pre>{
        html.escape(
            json.dumps(
                {"protocol": results["protocol"], "data": results["data"], "settings": results["settings"]},
                indent=1,
            )
        )
    }</pre>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path
