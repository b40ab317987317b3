"""report.html: the evaluation's figures as plots, tables and image grids, beside their real-vs-real floor."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
import torch

from synthmed.artifacts.images import save_png
from synthmed.evaluation.sets import ImageSet

FIDELITY_KEYS = ("fid", "precision", "recall", "density", "coverage")


def _fmt(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    if "not_computed" in entry:
        return "not computed: " + html.escape(entry["not_computed"])
    if "se" in entry:
        return f"{entry['value']:.4f} ± {entry['se'] or 0:.4f}"
    ci = entry.get("ci95")
    return f"{entry['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _fidelity_table(fid: dict[str, Any]) -> str:
    rows = []
    for group, res in fid.items():
        if "not_computed" in res:
            rows.append(
                f"<tr><th>{html.escape(group)}</th><td colspan=3>"
                f"not computed: {html.escape(res['not_computed'])}</td></tr>"
            )
            continue
        for key in (*FIDELITY_KEYS, "kid"):
            syn, floor = res["synthetic"], res["real_floor"]
            if "not_computed" in syn:
                rows.append(
                    f"<tr><th>{html.escape(group)}</th><td>{key}</td><td colspan=2>"
                    f"not computed: {html.escape(syn['not_computed'])}</td></tr>"
                )
                break
            rows.append(
                f"<tr><th>{html.escape(group)} (m={res['n_per_set']})</th><td>{key}</td>"
                f"<td>{_fmt(syn.get(key))}</td><td>{_fmt(floor.get(key))}</td></tr>"
            )
    return (
        "<table><tr><th>group</th><th>metric</th><th>synthetic vs train</th>"
        "<th>floor: holdout vs train</th></tr>" + "".join(rows) + "</table>"
    )


def _bars(ax: Any, labels: list[str], series: dict[str, list[dict | None]], title: str) -> None:
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for i, (name, entries) in enumerate(series.items()):
        vals = [e["value"] if e else np.nan for e in entries]
        err = np.array(
            [
                [e["value"] - e["ci95"][0], e["ci95"][1] - e["value"]] if e and e.get("ci95") else [0, 0]
                for e in entries
            ]
        ).T
        # A bootstrap interval need not contain the point estimate (FID is biased upwards by resampling).
        ax.bar(x + i * width, vals, width, yerr=np.maximum(err, 0), capsize=3, label=name)
    ax.set_xticks(x + width * (len(series) - 1) / 2, labels, fontsize=8)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")


def plot_fidelity(fid: dict[str, Any], path: Path) -> None:
    groups = [g for g, r in fid.items() if "synthetic" in r and "not_computed" not in r["synthetic"]]
    fig, axes = plt.subplots(1, len(FIDELITY_KEYS), figsize=(3.2 * len(FIDELITY_KEYS), 3.2))
    for ax, key in zip(axes, FIDELITY_KEYS, strict=True):
        series = {
            "synthetic": [fid[g]["synthetic"].get(key) for g in groups],
            "holdout (floor)": [fid[g]["real_floor"].get(key) for g in groups],
        }
        _bars(ax, groups, series, key.upper() if key == "fid" else key)
    axes[0].legend(fontsize=8)
    _save(fig, path)


def plot_diversity(div: dict[str, Any], path: Path) -> None:
    groups = [g for g, r in div.items() if "not_computed" not in r]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    series = {
        n: [div[g][n] if "value" in div[g][n] else None for g in groups]
        for n in ("synthetic", "holdout", "train")
    }
    _bars(ax, groups, series, "mean pairwise MS-SSIM (lower = more diverse)")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_privacy(privacy: dict[str, Any], path: Path) -> None:
    spaces = list(privacy["distances"])
    fig, axes = plt.subplots(1, len(spaces), figsize=(5.5 * len(spaces), 3.2), squeeze=False)
    for ax, space in zip(axes[0], spaces, strict=True):
        d = privacy["distances"][space]
        bins = np.histogram_bin_edges(np.concatenate([d["synthetic"], d["holdout"]]), bins=40)
        ax.hist(d["holdout"], bins=bins, alpha=0.6, density=True, label="holdout → train")
        ax.hist(d["synthetic"], bins=bins, alpha=0.6, density=True, label="synthetic → train")
        ax.axvline(privacy["spaces"][space]["threshold"], color="k", ls="--", label="copy threshold")
        ax.set_title(f"nearest training image, {space} space")
        ax.set_xlabel("distance (1 - similarity)")
        ax.legend(fontsize=8)
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


THUMB_PX = 128  # on screen; each thumbnail links to the image at its native size


def _thumb(image: torch.Tensor, assets: Path, name: str, caption: str) -> str:
    save_png(image, assets / "images" / f"{name}.png")
    src = f"{assets.name}/images/{name}.png"
    return (
        f'<figure><a href="{src}"><img src="{src}" width={THUMB_PX} height={THUMB_PX} '
        f'alt="{html.escape(caption)}"></a><figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def _sample_grids(sets: dict[str, ImageSet], assets: Path, per_class: int = 6) -> str:
    """Random images of every set, per class, at 128 px on screen, each opening at native size."""
    rows = []
    for name in ("train", "holdout", "synthetic"):
        s = sets[name]
        gen = torch.Generator().manual_seed(0)
        groups = {c: s.of_class(c) for c in s.class_names} or {"": torch.arange(len(s))}
        for c, idx in groups.items():
            pick = idx[torch.randperm(len(idx), generator=gen)[:per_class]].tolist()
            cells = "".join(_thumb(s.images[i], assets, f"{name}_{i}", c or s.sources[i]) for i in pick)
            title = f"{name}" + (f": {c}" if c else "")
            rows.append(f"<h3>{html.escape(title)}</h3><div class=row>{cells}</div>")
    return "".join(rows)


def _pairs_grid(sets: dict[str, ImageSet], pairs: list[dict[str, Any]], assets: Path) -> str:
    """The synthetic images closest to a training image, each beside that image, at native size on click."""
    if not pairs:
        return ""
    cells = "".join(
        "<div class=pair>"
        + _thumb(sets["synthetic"].images[p["synthetic"]], assets, f"pair{k}_synthetic", p["synthetic_file"])
        + _thumb(sets["train"].images[p["train"]], assets, f"pair{k}_train", p["train_file"])
        + f"<p>{'<b>flagged</b> ' if p['flagged'] else ''}distance / threshold {p['ratio']:.2f}</p></div>"
        for k, p in enumerate(pairs)
    )
    return (
        "<p>The synthetic images closest to a training image: each synthetic image (left) beside its nearest "
        "training image in pixel space (right). Ratios below 1 in every space are flagged.</p>"
        f"<div class=row>{cells}</div>"
    )


def _label_table(label: dict[str, Any]) -> str:
    if "not_computed" in label:
        return f"<p>Not computed: {html.escape(label['not_computed'])}</p>"
    rows = "".join(
        f"<tr><th>{html.escape(c)}</th><td>{_pct(v)}</td><td>{_pct(label['holdout'].get(c, {}))}</td></tr>"
        for c, v in label["synthetic"].items()
    )
    return (
        f"<table><tr><th>class</th><th>synthetic agreement</th><th>holdout (ceiling)</th></tr>{rows}</table>"
    )


def _condition_table(cond: dict[str, Any]) -> str:
    if "not_computed" in cond:
        return f"<p>Not computed: {html.escape(cond['not_computed'])}</p>"
    if "labels" in cond:  # 3D label maps: one table per label
        return "".join(f"<h3>{html.escape(k)}</h3>" + _condition_table(v) for k, v in cond["labels"].items())
    rows = []
    for metric in ("dice", "hd95"):
        cells = []
        for side in ("synthetic", "holdout_ceiling"):
            e = cond[side][metric]
            ci = e.get("ci95")
            cells.append(
                f"{e['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + f" (n={e['n']})"
                if e["mean"] is not None
                else html.escape(e.get("reason") or "-")
            )
        rows.append(f"<tr><th>{metric}</th><td>{cells[0]}</td><td>{cells[1]}</td></tr>")
    return (
        "<p>A segmenter trained on the real training pairs segments each synthetic image; its output is "
        "compared with the mask the image was generated for. The same segmenter on real holdout pairs is "
        "the ceiling. HD95 in pixels.</p><table><tr><th></th><th>synthetic vs its mask</th>"
        "<th>real holdout (ceiling)</th></tr>" + "".join(rows) + "</table>"
    )


def _pct(entry: dict[str, Any]) -> str:
    return (
        f"{100 * entry['agreement']:.1f}% (n={entry['n']})"
        if "agreement" in entry
        else html.escape(entry.get("not_computed", "-"))
    )


def _fid_25d(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    syn, floor = (
        f"{v:.3f}" if v is not None else "not computed" for v in (entry["synthetic"], entry["real_floor"])
    )
    return f"<p><b>2.5D FID</b> (mean over axial, coronal, sagittal): synthetic {syn}, floor {floor}.</p>"


def _privacy_text(priv: dict[str, Any]) -> str:
    return (
        f"<p><b>{100 * priv['flagged_fraction']:.1f}%</b> of synthetic images ({priv['flagged']} of "
        f"{priv['n_synthetic']}) are closer to a training image than {priv['percentile']:g}% of real holdout "
        "images are, in pixel space and in feature space; they copy "
        f"{priv['distinct_train_images_copied']} distinct training images. Floor: "
        f"{100 * priv['holdout_flagged_fraction']:.1f}% of the real holdout images pass the same test.</p>"
    )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _summary_table(rows: list[dict[str, Any]]) -> str:
    body = "".join(
        f"<tr class={r['verdict'].split()[0]}><th>{html.escape(r['measure'])}</th>"
        f"<td>{_num(r['synthetic'])}</td><td>{_num(r['floor'])}</td><td>{html.escape(r['rule'])}</td><td>{r['verdict']}</td></tr>"
        for r in rows
    )
    return (
        "<table><tr><th>measure</th><th>synthetic</th><th>real floor</th><th>rule</th><th>verdict</th></tr>"
        f"{body}</table>"
    )


def _warning_list(items: list[str]) -> str:
    if not items:
        return "<p>No warnings.</p>"
    return "<ul class=warnings>" + "".join(f"<li>{html.escape(w)}</li>" for w in items) + "</ul>"


def _accuracy(entry: dict[str, Any]) -> str:
    if "accuracy" not in entry:
        return html.escape(entry.get("not_computed", "-"))
    lo, hi = entry["ci95"]
    return f"{entry['accuracy']:.3f} [{lo:.3f}, {hi:.3f}], p = {entry['p_value']:.2g} (n={entry['n']})"


def _c2st_table(c2st: dict[str, Any]) -> str:
    cnn, probe = c2st.get("cnn", {}), c2st.get("linear_probe", {})
    groups = [g for g in cnn if isinstance(cnn[g], dict)] or list(probe)
    rows = "".join(
        f"<tr><th>{html.escape(g)}</th><td>{_accuracy(cnn.get(g, {}))}</td>"
        f"<td>{_accuracy(probe.get(g, {'not_computed': '-'}))}</td></tr>"
        for g in groups
    )
    return (
        "<p>A classifier trained to tell real holdout images from synthetic ones, scored on images it did "
        "not train on (cross-validated): 0.5 means it cannot tell them apart, 1.0 that every synthetic image "
        "gives itself away. Wilson 95% intervals; the CNN's p-value is the binomial test against chance, the "
        "probe's a permutation test. Read it beside the readers' visual Turing test of the review app.</p>"
        "<table><tr><th>group</th><th>CNN on pixels</th><th>linear probe on features</th></tr>"
        f"{rows}</table>"
    )


def _sharpness_table(sharp: dict[str, Any]) -> str:
    rows = []
    for group, res in sharp.items():
        if "not_computed" in res:
            continue
        lap, high = res["laplacian"], res["high_frequency_share"]
        rows.append(
            f"<tr><th>{html.escape(group)}</th><td>{_fmt(res['sharpness_ratio'])}</td>"
            + "".join(f"<td>{_fmt(lap[n])}</td>" for n in ("synthetic", "holdout", "train"))
            + f"<td>{_fmt(high['synthetic'])}</td><td>{_fmt(high['holdout'])}</td></tr>"
        )
    return (
        "<table><tr><th>group</th><th>sharpness ratio (synthetic / holdout)</th><th>mean |Laplacian| "
        "synthetic</th><th>holdout</th><th>train</th><th>power above half Nyquist, synthetic</th>"
        "<th>holdout</th></tr>" + "".join(rows) + "</table>" + _channel_table(sharp.get("all", {}))
    )


def _channel_table(res: dict[str, Any]) -> str:
    """Colour or multi-channel images: each channel's sharpness ratio and mean intensity (colour balance)."""
    if "per_channel" not in res:
        return ""
    rows = "".join(
        f"<tr><th>{c['channel']}</th><td>{_fmt(c['sharpness_ratio'])}</td>"
        + "".join(f"<td>{_fmt(c['mean_intensity'][n])}</td>" for n in ("synthetic", "holdout", "train"))
        + "</tr>"
        for c in res["per_channel"]
    )
    return (
        "<p>Per channel (0, 1, 2 = red, green, blue for colour), all images:</p><table><tr><th>channel</th>"
        "<th>sharpness ratio</th><th>mean intensity, synthetic</th><th>holdout</th><th>train</th></tr>"
        f"{rows}</table>"
    )


def plot_spectrum(sharp: dict[str, Any], path: Path) -> None:
    groups = [g for g, r in sharp.items() if "spectrum" in r]
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.2), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        spec = sharp[group]["spectrum"]
        for name in ("synthetic", "holdout", "train"):
            ax.semilogy(spec["frequency"], spec[name], label=name)
        ax.set_title(f"radial power spectrum: {group}", fontsize=9)
        ax.set_xlabel("frequency (fraction of Nyquist)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    _save(fig, path)


def _frd_table(frd: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(g)}</th><td>{_fmt(r['synthetic'])}</td><td>{_fmt(r['real_floor'])}</td></tr>"
        for g, r in frd.items()
        if isinstance(r, dict) and "synthetic" in r
    )
    return (
        "<p>Fréchet radiomics distance: the Fréchet distance of standardised texture features (first-order "
        "statistics, grey-level co-occurrence, local binary patterns, Laplacian energy) to the training "
        "images; no network, so blur and texture move it.</p><table><tr><th>group</th><th>synthetic</th>"
        f"<th>floor: holdout</th></tr>{rows}</table>"
    )


def write_html(
    report: dict[str, Any], sets: dict[str, ImageSet], pairs: list[dict[str, Any]], out: Path
) -> Path:
    assets = out / "report_files"
    assets.mkdir(parents=True, exist_ok=True)
    plot_fidelity(report["fidelity"], assets / "fidelity.png")
    plot_diversity(report["diversity"], assets / "diversity.png")
    plot_privacy(report["privacy"], assets / "privacy.png")
    priv = report["privacy"]
    plot_spectrum(report["sharpness"], assets / "spectrum.png")
    body = [
        "<h1>synthmed evaluation</h1>",
        "<h2>Summary</h2>",
        _summary_table(report["summary"]),
        "<h2>Warnings</h2>",
        _warning_list(report["headline"]["warnings"]),
        "<p>"
        + ", ".join(
            f"{n}: {s['n']} images from <code>{html.escape(s['root'])}</code>"
            for n, s in report["sets"].items()
        )
        + "</p>",
        _sample_grids(sets, assets),
        "<h2>Fidelity</h2><p>Synthetic vs real training images, beside the floor (real holdout vs the same "
        "training images), with bootstrap 95% intervals; KID ± its standard error.</p>",
        f'<img src="{assets.name}/fidelity.png" alt="fidelity">',
        _fidelity_table(report["fidelity"]),
        _fid_25d(report.get("fid_25d")),
        _frd_table(report["frd"]),
        "<h2>Machine Turing test (C2ST)</h2>",
        _c2st_table(report["c2st"]),
        "<h2>Sharpness and texture</h2>",
        _sharpness_table(report["sharpness"]),
        f'<img src="{assets.name}/spectrum.png" alt="power spectra">',
        "<h2>Diversity</h2>",
        f'<img src="{assets.name}/diversity.png" alt="diversity">',
        "<h2>Privacy: memorisation audit</h2>",
        _privacy_text(priv),
        f'<img src="{assets.name}/privacy.png" alt="privacy">',
        _pairs_grid(sets, pairs, assets),
        "<h2>Label fidelity</h2>",
        _label_table(report["label_fidelity"]),
        "<h2>Condition fidelity</h2>",
        _condition_table(report["condition_fidelity"]),
    ]
    path = out / "report.html"
    path.write_text(_PAGE.format(body="\n".join(body)))
    return path


_PAGE = """<!doctype html><html lang=en><head><meta charset=utf-8><title>synthmed evaluation</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}}
img{{image-rendering:pixelated;max-width:100%}} .row{{display:flex;gap:1.5em;flex-wrap:wrap}}
figure{{margin:0}}
figcaption{{text-align:center;color:#555;max-width:128px;font-size:.8em;overflow-wrap:anywhere}}
table{{border-collapse:collapse;margin:1em 0}}
th,td{{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em}}
tr.warn td{{background:#fde2e1}} tr.pass td{{background:#e3f6e5}} ul.warnings li{{color:#8a1c12}}
.pair{{display:flex;gap:.3em;align-items:flex-start;flex-wrap:wrap;max-width:300px}}
.pair p{{flex-basis:100%;margin:.2em 0;font-size:.85em}}</style></head><body>
{body}
</body></html>"""
