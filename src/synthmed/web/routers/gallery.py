"""Galleries (admins): a catalogue data set's samples as thumbnails with their masks or label maps
overlaid (drawn on the server), filtered by label and review state, and each sample's provenance page."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from PIL import Image
from sqlalchemy import func, select

from synthmed.catalogue.models import REVIEW_STATES, Dataset, GenerationRun, Sample
from synthmed.data.preprocess import FitResize
from synthmed.data.readers import read_image
from synthmed.data.sources import hash_file
from synthmed.errors import SynthmedError
from synthmed.review.render import (
    Source,
    axial_slices,
    image_file,
    is_colour_image,
    render_image,
    render_volume,
)
from synthmed.web.auth import Admin
from synthmed.web.deps import DB, get_or_404
from synthmed.web.pages import readable, render

router = APIRouter(prefix="/gallery")
PAGE_SIZE = 24
THUMB = 256
TINT = np.array([255, 40, 40], dtype=np.float32)  # mask colour: red, half-transparent, solid outline


@router.get("/{dataset_id}")
def gallery(
    request: Request,
    session: DB,
    user: Admin,
    dataset_id: int,
    label: Annotated[str, Query(max_length=200)] = "",
    state: Annotated[str, Query(max_length=16)] = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    dataset = get_or_404(session, Dataset, dataset_id)
    if state and state not in REVIEW_STATES:
        raise HTTPException(400, f"state must be one of {', '.join(REVIEW_STATES)} (or empty for all)")
    labels = session.scalars(
        select(Sample.label).where(Sample.dataset_id == dataset.id).distinct().order_by(Sample.label)
    ).all()
    query = select(Sample).where(Sample.dataset_id == dataset.id)
    if label:
        query = query.where(Sample.label == label)
    if state:
        query = query.where(Sample.review_state == state)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    samples = session.scalars(query.order_by(Sample.id).offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE)).all()
    return render(
        request,
        "gallery.html",
        user=user,
        dataset=dataset,
        samples=samples,
        labels=labels,
        label=label,
        state=state,
        states=REVIEW_STATES,
        page=page,
        total=total,
        more=page * PAGE_SIZE < (total or 0),
    )


@router.get("/samples/{sample_id}")
def sample_page(request: Request, session: DB, user: Admin, sample_id: int) -> HTMLResponse:
    """Provenance: the manifest row as written (server paths by name, checksums short), the generation run
    and trained model, and whether the file still has the checksum it was catalogued with."""
    sample = get_or_404(session, Sample, sample_id)
    path = Path(sample.dataset.root) / sample.path
    current = hash_file(path) if path.is_file() else None
    run = session.get(GenerationRun, sample.generation_run_id) if sample.generation_run_id else None
    names = {d.root.rstrip("/"): d.name for d in session.scalars(select(Dataset))}
    return render(
        request,
        "sample.html",
        user=user,
        sample=sample,
        run=run,
        current_sha256=current,
        provenance=json.dumps(readable(sample.provenance, names), indent=2, sort_keys=True),
    )


@router.get("/samples/{sample_id}/thumb.png")
def thumbnail(session: DB, user: Admin, sample_id: int) -> Response:
    sample = get_or_404(session, Sample, sample_id)
    root = Path(sample.dataset.root)
    mask = root / sample.mask_path if sample.mask_path else None
    return Response(overlay_png(sample.files, mask, sample.dataset.spatial_dims), media_type="image/png")


def _mask_plane(path: Path, size: int) -> np.ndarray:
    """A 2D mask with the geometry render_image gives its image (longest side fitted, centred, padded)."""
    mask = read_image(path) > 0
    height, width = FitResize(size, "longest").target_shape(*mask.shape)
    fitted = np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
    plane = np.zeros((size, size), dtype=bool)
    top, left = (size - height) // 2, (size - width) // 2
    plane[top : top + height, left : left + width] = fitted
    return plane


def overlay_png(image: Source, mask: Path | None, spatial_dims: int, size: int = THUMB) -> bytes:
    """The image (3D: its middle axial slice) as an RGB PNG with its mask tinted and outlined."""
    try:
        if spatial_dims == 3:
            slices = axial_slices(image)
            plane = render_volume(image, size, slices)[slices // 2]  # contrasts side by side
            region = render_volume(mask, size, slices)[slices // 2] > 0 if mask else None
            if region is not None:  # the label map over every contrast
                region = np.tile(region, (1, plane.shape[1] // region.shape[1]))
        else:
            path = image_file(image)
            plane = render_image(path, size, colour=is_colour_image(path))
            region = _mask_plane(mask, size) if mask else None
    except SynthmedError as exc:
        raise HTTPException(404, f"cannot show this sample: {exc}") from exc
    rgb = (
        plane.astype(np.float32) if plane.ndim == 3 else np.repeat(plane[..., None].astype(np.float32), 3, -1)
    )
    if region is not None and region.any():
        rgb[region] = 0.55 * rgb[region] + 0.45 * TINT
        inner = region.copy()
        inner[1:-1, 1:-1] &= region[:-2, 1:-1] & region[2:, 1:-1] & region[1:-1, :-2] & region[1:-1, 2:]
        rgb[region & ~inner] = TINT
    buf = io.BytesIO()
    Image.fromarray(rgb.round().astype(np.uint8), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()
