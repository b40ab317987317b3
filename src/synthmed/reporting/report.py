"""A self-contained HTML report of a run: real vs synthetic grids per class and the training curves."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
import torch

from synthmed import data as data_stage
from synthmed.artifacts.images import save_grid
from synthmed.artifacts.manifest import MANIFEST, read_manifest
from synthmed.config import TrainConfig


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(run_dir: Path, path: Path) -> None:
    """Training loss and validation metric of each stage, one panel per stage."""
    stages = [s for s in ("autoencoder", "diffusion") if (run_dir / s / "log.jsonl").exists()]
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(5.5 * max(1, len(stages)), 3.6), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=False):
        rows = read_log(run_dir / stage / "log.jsonl")
        keys = sorted({k for r in rows for k in r if k.startswith(("loss_", "val_"))})
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot(*zip(*pts, strict=True), label=key, marker="o" if key.startswith("val_") else None, ms=3)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _real_by_class(cfg: TrainConfig, per_class: int) -> tuple[list[str], dict[int, torch.Tensor]]:
    prepared = data_stage.prepare(cfg.data, cfg.seed, cfg.run_dir / "split.json")
    images, labels = data_stage.load_split_arrays(
        prepared.records, cfg.data, "train", cfg.run_dir / "cache", class_names=prepared.class_names
    )
    return prepared.class_names, {
        i: images[labels == i][:per_class] for i in range(len(prepared.class_names))
    }


def _synthetic_by_class(
    synthetic_dir: Path, class_names: list[str], per_class: int
) -> dict[int, torch.Tensor]:
    rows = read_manifest(synthetic_dir / MANIFEST)
    out = {}
    for i, name in enumerate(class_names):
        chosen = [r for r in rows if r["label"] == name and r.get("file")][:per_class]
        if chosen:
            arrays = [
                data_stage.read_image(synthetic_dir / r["file"]) / (2 ** r["bit_depth"] - 1) for r in chosen
            ]
            out[i] = torch.from_numpy(np.stack(arrays))[:, None]
    return out


# Real and synthetic grids side by side, each half the page wide: 3 columns put a 64 px image at about 180 px
# on screen, where ribs and fine anatomy can be judged (6 columns showed them at native size).
GRID_COLUMNS = 3


def write_report(
    cfg: TrainConfig,
    synthetic_dir: Path,
    out: Path,
    *,
    title: str,
    notes: str = "",
    per_class: int = 12,
    facts: dict[str, Any] | None = None,
) -> Path:
    """Write ``out`` (report.html) with its images in ``<out stem>_files/``."""
    assets = out.parent / f"{out.stem}_files"
    assets.mkdir(parents=True, exist_ok=True)
    class_names, real = _real_by_class(cfg, per_class)
    synthetic = _synthetic_by_class(synthetic_dir, class_names, per_class)
    plot_curves(cfg.run_dir, assets / "curves.png")
    sections = []
    for i, name in enumerate(class_names):
        save_grid(real[i], assets / f"real_{i}.png", ncols=GRID_COLUMNS)
        cells = [
            f'<figure><img src="{assets.name}/real_{i}.png">'
            "<figcaption>real (training split)</figcaption></figure>"
        ]
        if i in synthetic:
            save_grid(synthetic[i], assets / f"synthetic_{i}.png", ncols=GRID_COLUMNS)
            cells.append(
                f'<figure><img src="{assets.name}/synthetic_{i}.png">'
                "<figcaption>synthetic</figcaption></figure>"
            )
        sections.append(f"<h3>{html.escape(name)}</h3><div class=row>{''.join(cells)}</div>")
    fact_rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in (facts or {}).items()
    )
    out.write_text(
        _PAGE.format(
            title=html.escape(title),
            notes=notes,
            facts=fact_rows,
            grids="".join(sections),
            curves=f"{assets.name}/curves.png",
        )
    )
    return out


_PAGE = """<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
img{{image-rendering:pixelated;max-width:100%}} .row{{display:flex;gap:1.5em}}
.row figure img{{width:100%}} .row figure{{flex:1 1 0}}
figure{{margin:0}} figcaption{{text-align:center;color:#555}} table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em}}</style></head><body>
<h1>{title}</h1>{notes}<h2>Run</h2><table>{facts}</table>
<h2>Real vs synthetic, per class</h2>{grids}
<h2>Training curves</h2><img src="{curves}" alt="training and validation losses per stage">
</body></html>"""
