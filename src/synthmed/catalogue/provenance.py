"""Proof that a synthetic sample is an image synthmed generated, before it is catalogued and again before it
is exported: a real patient's scan must never pass for synthetic.

A sample proves its origin through its manifest row:

- the file is of the kind generation writes: 2D, an 8- or 16-bit greyscale PNG of the model's image size
  named ``<label>/syn_<seed>.png``; 3D, a float32 NIfTI ``syn_<seed>_image.nii.gz`` of the row's size;
- its sha256 is the one generation wrote into the row;
- the row names a model whose weight files are there with the row's checksums (and the catalogue's);
- seeded regeneration reproduces its pixels bit for bit. Every sample of a set of at most
  REGENERATE_AT_LEAST is regenerated; of a larger set a random sample of that many, drawn with the
  operating system's randomness so nobody can tell beforehand which files will be checked; all of them
  when asked. Regenerating a 2D batch proves every sample of that batch.

Anything else is refused, naming the file. 2D samples are also compared with the model's training images
(the privacy filter's copy check, calibrated on the run's holdout images): likely copies are marked.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sqlalchemy.orm import Session

from synthmed.artifacts.files import file_sha256
from synthmed.artifacts.images import to_uint
from synthmed.artifacts.manifest import file_name
from synthmed.artifacts.run import RunDir
from synthmed.catalogue.models import GenerationRun, Sample, utcnow
from synthmed.data.volumes import open_volume
from synthmed.errors import SynthmedError
from synthmed.sampling.pipeline import Pipeline
from synthmed.sampling.privacy_filter import copy_guard_for_run

REGENERATE_AT_LEAST = 20
COPY_PERCENTILE = 99.0  # as synthmed generate --privacy-filter
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GZIP_MAGIC = b"\x1f\x8b"
WEIGHTS = (("autoencoder", "autoencoder_sha256"), ("diffusion", "diffusion_sha256"))
# Rows that agree on these were drawn in one batch with the same settings: one replay proves them all.
BATCH_KEYS = (
    "run_dir",
    "device",
    "precision",
    "checkpoint",
    "batch_seeds",
    "label",
    "sampler",
    "steps",
    "guidance",
    "condition",
    "condition_file",
    "condition_sha256",
    "conditioning_scale",
    "controlnet_sha256",
)
COPY_CHUNK = 256  # images compared with the training images at a time


@dataclass
class Claim:
    """A file that claims to be synthetic, with the manifest row that says where it came from."""

    path: Path
    rel: str  # as the row names it
    row: dict[str, Any]
    spatial_dims: int
    sha256: str = ""  # of the file as it is now (check_file fills it in)


@dataclass
class Proof:
    """What proving a set of claims found: the files regenerated bit for bit and the copy check's verdicts."""

    regenerated: set[Path] = field(default_factory=set)
    copy_checks: dict[Path, dict[str, Any]] = field(default_factory=dict)


class Refusals:
    """Collects why files fail, so one error names every refused file."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def add(self, path: Path, reason: str) -> None:
        self.reasons.append(f"{path}: {reason}")

    def raise_any(self, what: str) -> None:
        if self.reasons:
            shown = "; ".join(self.reasons[:20]) + ("; ..." if len(self.reasons) > 20 else "")
            raise SynthmedError(
                f"{len(self.reasons)} file(s) cannot prove they are synthetic, so {what}: {shown}. Only "
                "images synthmed generate wrote, unchanged, with their manifest rows and the weights that "
                "made them pass"
            )


def prove(
    claims: list[Claim], *, everything: bool = False, copy_percentile: float | None = COPY_PERCENTILE
) -> Proof:
    """Check every claim (file kind, sha256, model weights), regenerate a sample of them (all when
    ``everything``) and, 2D, run the copy check (``copy_percentile`` None: not). Raises naming the files
    that fail; nothing is written."""
    refusals = Refusals()
    for claim in claims:
        check_file(claim, refusals)
    check_weights(claims, refusals)
    refusals.raise_any("nothing was catalogued")
    proof = Proof()
    pipes = _Pipelines()
    proof.regenerated = regenerate(claims, choose(claims, everything), pipes, refusals)
    refusals.raise_any("nothing was catalogued")
    if copy_percentile is not None:
        proof.copy_checks = copy_checks([c for c in claims if c.spatial_dims == 2], pipes, copy_percentile)
    return proof


def verify_catalogued(
    session: Session,
    samples: list[Sample],
    *,
    everything: bool = False,
    what: str = "nothing was exported",
    copy_percentile: float | None = None,
) -> Proof:
    """Prove catalogued synthetic samples again (before export, or `synthmed catalogue verify`): the file
    unchanged since it was catalogued, of its kind, with its row's sha256; the row's weights those of the
    catalogued model and still there; a fresh random sample regenerated (all when ``everything``), and
    every sample never proven before. Marks the samples verified (and regenerated); raises naming the files
    that fail."""
    refusals, claims, never = Refusals(), [], []
    for sample in samples:
        claim = _catalogued_claim(session, sample, refusals)
        if claim is None:
            continue
        check_file(claim, refusals)
        if claim.sha256 and claim.sha256 != sample.sha256:
            refusals.add(claim.path, "changed since it was catalogued (sha256 differs)")
        claims.append(claim)
        if sample.verified is None:
            never.append(claim)
    check_weights(claims, refusals)
    refusals.raise_any(what)
    pipes = _Pipelines()
    chosen = choose(claims, everything)
    proof = Proof(regenerate(claims, chosen + [c for c in never if c not in chosen], pipes, refusals))
    refusals.raise_any(what)
    if copy_percentile is not None:
        unchecked = [  # never checked, or skipped before (e.g. the run's data was away)
            c for c, s in zip(claims, samples, strict=True) if c.spatial_dims == 2 and s.likely_copy is None
        ]
        proof.copy_checks = copy_checks(unchecked, pipes, copy_percentile)
    now = utcnow()
    for sample, claim in zip(samples, claims, strict=True):
        sample.verified = now
        if claim.path in proof.regenerated:
            sample.regenerated = now
        mark_copy_check(sample, proof.copy_checks.get(claim.path))
    return proof


def mark_copy_check(sample: Sample, verdict: dict[str, Any] | None) -> None:
    """Store the copy check's verdict on the sample (None: not run this time, the sample keeps its own)."""
    if verdict is not None:
        sample.copy_check = verdict
        sample.likely_copy = bool(verdict["flagged"]) if "flagged" in verdict else None


def inside_folder(root: Path, relative: str) -> Path:
    """``root / relative``, refusing paths that leave the data set's folder (a hostile catalogue row)."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise SynthmedError(f"sample file {relative!r} lies outside its data set folder {root}", field="path")
    return path


def _catalogued_claim(session: Session, sample: Sample, refusals: Refusals) -> Claim | None:
    """The claim a catalogued synthetic sample makes, or None (with the reason) when it cannot make one."""
    root = Path(sample.dataset.root)
    try:
        path = inside_folder(root, sample.path)
    except SynthmedError as exc:
        refusals.add(root / sample.path, str(exc))
        return None
    run = session.get(GenerationRun, sample.generation_run_id) if sample.generation_run_id else None
    if sample.dataset.origin != "synthetic":
        refusals.add(path, "a real sample; only synthetic samples are proven")
    elif run is None:
        refusals.add(path, "catalogued without a generation run, so no model vouches for it")
    elif any(sample.provenance.get(key) != value for key, value in _model_record(run).items()):
        refusals.add(path, "its manifest row names another model than the one catalogued with its run")
    elif not path.is_file():
        refusals.add(path, "missing")
    else:
        return Claim(path, sample.path, sample.provenance, sample.dataset.spatial_dims)
    return None


def _model_record(run: GenerationRun) -> dict[str, str]:
    model = run.model
    return {
        "run_dir": model.run_dir,
        "autoencoder_sha256": model.autoencoder_sha256,
        "diffusion_sha256": model.diffusion_sha256,
    }


def check_file(claim: Claim, refusals: Refusals) -> None:
    """The file is of the kind generation writes and has the sha256 its row records."""
    try:
        _check_kind(claim)
        claim.sha256 = file_sha256(claim.path)
    except (SynthmedError, OSError) as exc:
        refusals.add(claim.path, str(exc).removeprefix(f"{claim.path}: "))
        return
    except (KeyError, TypeError, ValueError) as exc:  # a forged row lacking fields generation writes
        refusals.add(
            claim.path, f"its manifest row is not one generation wrote ({type(exc).__name__}: {exc})"
        )
        return
    recorded = claim.row.get("sha256")
    if recorded is None:
        refusals.add(claim.path, "its manifest row records no sha256 (older synthmed): generate it again")
    elif recorded != claim.sha256:
        refusals.add(claim.path, "its sha256 is not the one its manifest row records: not the file generated")


def _check_kind(claim: Claim) -> None:
    row, seed = claim.row, int(claim.row["seed"])
    if claim.spatial_dims == 3:
        expected, magic = f"syn_{seed:08d}_image.nii.gz", GZIP_MAGIC
    else:
        expected, magic = file_name(row.get("label"), seed), PNG_MAGIC
    if claim.rel != expected:
        raise SynthmedError(f"generation names the image of seed {seed} {expected!r}, not {claim.rel!r}")
    with open(claim.path, "rb") as fh:
        if fh.read(len(magic)) != magic:
            kind = "a gzipped NIfTI" if claim.spatial_dims == 3 else "a PNG"
            raise SynthmedError(f"not {kind} file as synthmed generate writes")
    if claim.spatial_dims == 3:
        _check_volume_kind(claim)
    else:
        _check_png_kind(claim)


def _check_png_kind(claim: Claim) -> None:
    bits, size = int(claim.row.get("bit_depth", 8)), int(claim.row.get("image_size", 0))
    colour = int(claim.row.get("channels", 1)) == 3
    try:
        with Image.open(claim.path, formats=["PNG"]) as im:
            mode, shape = im.mode, im.size
    except Exception as exc:  # Pillow raises many types for damaged files
        raise SynthmedError(f"not a readable PNG ({type(exc).__name__})") from exc
    expected = "RGB" if colour else ("L" if bits == 8 else "I;16")
    if mode != expected or shape != (size, size):
        kind = "8-bit RGB colour" if colour else f"{bits}-bit greyscale"
        raise SynthmedError(
            f"a {shape[0]}x{shape[1]} PNG of mode {mode}; generation wrote this row as {kind} "
            f"of {size}x{size} pixels"
        )


def _check_volume_kind(claim: Claim) -> None:
    try:
        header = open_volume(claim.path).header
    except Exception as exc:  # nibabel raises many types for damaged files
        raise SynthmedError(f"not a readable NIfTI volume ({type(exc).__name__})") from exc
    shape, size = tuple(int(n) for n in header.get_data_shape()), tuple(claim.row.get("size") or ())
    channels = int(claim.row.get("channels", 1))
    size = (*size, channels) if channels > 1 else size  # contrasts on the 4th axis
    if header.get_data_dtype() != np.float32 or shape != size:
        raise SynthmedError(
            f"a {header.get_data_dtype()} volume of shape {shape}; generation wrote this row as float32 of "
            f"shape {size}"
        )


def check_weights(claims: Iterable[Claim], refusals: Refusals) -> None:
    """Every row's model weights are there, with the checksums the row records."""
    hashes: dict[Path, str | None] = {}
    for claim in claims:
        for stage, key in WEIGHTS:
            path = RunDir(Path(str(claim.row.get("run_dir")))).weights(stage)
            if path not in hashes:
                hashes[path] = file_sha256(path) if path.is_file() else None
            if hashes[path] != claim.row.get(key):
                found = "missing" if hashes[path] is None else "of another sha256"
                refusals.add(claim.path, f"its row names the {stage} weights {path}, which are {found}")
                break


def choose(claims: list[Claim], everything: bool) -> list[Claim]:
    """The claims to regenerate: all of a small set (or when asked), else an unpredictable random sample."""
    if everything or len(claims) <= REGENERATE_AT_LEAST:
        return list(claims)
    return random.SystemRandom().sample(claims, REGENERATE_AT_LEAST)


class _Pipelines:
    """Loaded models by run, device, precision and checkpoint (a manifest may name several)."""

    def __init__(self) -> None:
        self.loaded: dict[tuple[str, str, str, str], Pipeline] = {}

    def __call__(self, row: dict[str, Any]) -> Pipeline:
        key = (str(row["run_dir"]), str(row["device"]), str(row["precision"]), str(row["checkpoint"]))
        if key not in self.loaded:
            self.loaded[key] = Pipeline.load(key[0], device=key[1], precision=key[2], checkpoint=key[3])
        return self.loaded[key]

    def any_for(self, run_dir: str) -> Pipeline | None:
        return next((pipe for key, pipe in self.loaded.items() if key[0] == run_dir), None)


def regenerate(claims: list[Claim], chosen: list[Claim], pipes: _Pipelines, refusals: Refusals) -> set[Path]:
    """Regenerate the chosen claims (2D: their whole batches, which proves every claim drawn in them) and
    compare pixels; returns the files reproduced bit for bit."""
    batches: dict[str, list[Claim]] = {}
    for claim in claims:
        batches.setdefault(_batch_key(claim), []).append(claim)
    proven: set[Path] = set()
    done: set[str] = set()
    for claim in chosen:
        key = _batch_key(claim)
        if key in done:
            continue
        done.add(key)
        members = batches[key] if claim.spatial_dims == 2 else [claim]
        try:
            regenerated = _replay(pipes(claim.row), claim, members)
        except (SynthmedError, KeyError, TypeError, ValueError) as exc:
            refusals.add(claim.path, f"cannot be regenerated here to prove it ({type(exc).__name__}: {exc})")
            continue
        for member, pixels in zip(members, regenerated, strict=True):
            mismatch = _differs(member, pixels)
            if mismatch:
                refusals.add(member.path, mismatch)
            else:
                proven.add(member.path)
    return proven


def _batch_key(claim: Claim) -> str:
    if claim.spatial_dims == 3:  # volumes are replayed one by one (quality-check retries, label maps)
        return claim.rel
    return json.dumps([claim.row.get(key) for key in BATCH_KEYS], sort_keys=True)


def _replay(pipe: Pipeline, claim: Claim, members: list[Claim]) -> list[np.ndarray]:
    """The regenerated pixels of ``members`` as generation stored them."""
    if claim.spatial_dims == 3:
        from synthmed.sampling.volumes import regenerate_volume  # 3D: only when a volume is checked

        volume, _, _ = regenerate_volume(pipe, claim.row)
        arr = volume.detach().cpu().numpy().astype(np.float32)
        return [arr[0] if len(arr) == 1 else np.moveaxis(arr, 0, -1)]  # as save_nifti stores channels
    batch = pipe.regenerate_batch(claim.row)
    seeds = [int(s) for s in claim.row["batch_seeds"]]
    return [to_uint(batch[seeds.index(int(m.row["seed"]))], int(m.row.get("bit_depth", 8))) for m in members]


def _differs(claim: Claim, regenerated: np.ndarray) -> str | None:
    """Why the file's pixels are not the regenerated ones, or None when they are bit for bit."""
    if claim.spatial_dims == 3:
        stored = np.asarray(open_volume(claim.path).dataobj)
    else:
        with Image.open(claim.path, formats=["PNG"]) as im:
            stored = np.asarray(im)
    if stored.shape == regenerated.shape and np.array_equal(stored, regenerated):
        return None
    differ = int((stored != regenerated).sum()) if stored.shape == regenerated.shape else stored.size
    return (
        f"regenerating seed {claim.row['seed']} from its manifest row does not reproduce it ({differ} of "
        f"{stored.size} values differ): its pixels are not what that model generated"
    )


def copy_checks(claims: list[Claim], pipes: _Pipelines, percentile: float) -> dict[Path, dict[str, Any]]:
    """Per 2D file: the privacy filter's copy check against its model's training images (flagged: a likely
    copy), or why it could not run (e.g. the run's data is no longer there)."""
    verdicts: dict[Path, dict[str, Any]] = {}
    by_run: dict[str, list[Claim]] = {}
    for claim in claims:
        by_run.setdefault(str(claim.row["run_dir"]), []).append(claim)
    for run_dir, members in by_run.items():
        try:
            pipe = pipes.any_for(run_dir) or pipes(members[0].row)
            guard = copy_guard_for_run(pipe.run_dir, pipe.cfg, percentile)
        except SynthmedError as exc:
            verdicts |= {m.path: {"skipped": str(exc)} for m in members}
            continue
        for start in range(0, len(members), COPY_CHUNK):
            chunk = members[start : start + COPY_CHUNK]
            images = torch.stack([_as_model_image(m) for m in chunk])
            verdicts |= {m.path: v for m, v in zip(chunk, guard.check(images), strict=True)}
    return verdicts


def _as_model_image(claim: Claim) -> torch.Tensor:
    """A generated PNG back in [0, 1], (C, H, W), as the model made it (up to the PNG's rounding)."""
    with Image.open(claim.path, formats=["PNG"]) as im:
        arr = np.asarray(im).astype(np.float32)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr / (255.0 if int(claim.row.get("bit_depth", 8)) == 8 else 65535.0))
