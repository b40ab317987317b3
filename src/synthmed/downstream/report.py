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


def write_csv(results: dict[str, Any], path: Path) -> None:
    metrics = list(results["runs"][0]["metrics"]) if results["runs"] else []
    header = ["arm", "ratio", "real_fraction", "seed", "n_real", "n_synthetic"]
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
            row = [run[k] for k in header[:6]]
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


def plot_vs_ratio(pooled: list[dict[str, Any]], metric: str, path: Path) -> None:
    """Pooled metric against the synthetic:real ratio (the real arm at 0), one line per real fraction."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for f in sorted({p["real_fraction"] for p in pooled if p["real_fraction"] is not None}):
        pts = sorted(
            (
                (p["ratio"] or 0.0, p["metrics"][metric])
                for p in pooled
                if p["real_fraction"] == f and p["arm"] in ("real", "real+synthetic")
            ),
            key=lambda t: t[0],
        )
        if pts:
            _errorbar(ax, [x for x, _ in pts], [e for _, e in pts], f"real fraction {f:g}")
    _finish(ax, "synthetic : real ratio", metric, path, fig)


def plot_vs_fraction(pooled: list[dict[str, Any]], metric: str, path: Path) -> None:
    """Pooled metric against the real fraction, one line per arm (synthetic-only as a flat line)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    keys = sorted({(p["arm"], p["ratio"] or 0.0) for p in pooled}, key=str)
    for arm, ratio in keys:
        pts = [p for p in pooled if p["arm"] == arm and (p["ratio"] or 0.0) == ratio]
        label = arm + (f" x{ratio:g}" if ratio else "")
        if arm == "synthetic":
            ax.axhline(pts[0]["metrics"][metric]["value"] or float("nan"), ls="--", c="grey", label=label)
            continue
        pts.sort(key=lambda p: p["real_fraction"])
        _errorbar(ax, [p["real_fraction"] for p in pts], [p["metrics"][metric] for p in pts], label)
    _finish(ax, "fraction of real training images", metric, path, fig)


def _finish(ax: Any, xlabel: str, metric: str, path: Path, fig: Any) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} (mean over seeds, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(entry: dict[str, Any] | None) -> str:
    if not entry or entry["value"] is None:
        return "-"
    ci = entry["ci95"]
    return f"{entry['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _table(pooled: list[dict[str, Any]]) -> str:
    metrics = list(pooled[0]["metrics"]) if pooled else []
    head = "<tr><th>arm</th><th>ratio</th><th>real fraction</th>" + "".join(
        f"<th>{html.escape(m)}</th><th>&Delta; vs real</th>" for m in metrics
    )
    rows = []
    for p in pooled:
        cells = "".join(
            f"<td>{_fmt(p['metrics'][m])}</td><td>{_fmt((p['vs_real'] or {}).get(m))}</td>" for m in metrics
        )
        rows.append(
            f"<tr><th>{html.escape(p['arm'])}</th><td>{p['ratio'] if p['ratio'] is not None else '-'}</td>"
            f"<td>{p['real_fraction'] if p['real_fraction'] is not None else '-'}</td>{cells}</tr>"
        )
    return f"<table>{head}</tr>{''.join(rows)}</table>"


def write_html(results: dict[str, Any], out: Path) -> Path:
    metric = results["primary_metric"]
    plot_vs_ratio(results["pooled"], metric, out / "metric_vs_ratio.png")
    plot_vs_fraction(results["pooled"], metric, out / "metric_vs_fraction.png")
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
<h2>Mean over seeds, 95% bootstrap CI; &Delta; = paired difference vs the real-only arm</h2>
{_table(results["pooled"])}
<h2>{html.escape(metric)} vs synthetic:real ratio</h2><img src="metric_vs_ratio.png">
<h2>{html.escape(metric)} vs real fraction</h2><img src="metric_vs_fraction.png">
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
