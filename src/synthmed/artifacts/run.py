"""The run folder of ``synthmed train``, read and written here alone (nnU-Net style: everything a result
depends on lies beside it, so loading a run never needs the command line that trained it)::

    config.yaml              resolved config (preset + overrides)
    split.json               every file with its label, content hash and split (train / val / holdout)
    metadata.json            what loading the weights needs beside config.yaml (RunMetadata, versioned)
    cache/                   preprocessed arrays, keyed by content and settings
    autoencoder/             last.pt, step_*.pt, model.pt (EMA + raw weights), log.jsonl, previews/
    diffusion/               the same, plus latents-<autoencoder sha256>.pt
    controlnet/              the mask ControlNet (3D: the label-map one) with controlnet.yaml, the settings it
                             was started with; 3D also candidates.pt, the training label maps generation draws
    controlnet-<condition>/  2D: the edges and sobel ControlNets, laid out alike
    distilled/               (after ``synthmed distill``) distill.yaml, the settings it was started with, and
                             steps-<N>/ per round: the student sampling in N steps, laid out like a stage

Runs trained before metadata.json existed keep their metadata in the ``extra`` entry of each model.pt;
:meth:`RunDir.metadata` reads it from there when the file is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from synthmed.artifacts import checkpoint as ckpt
from synthmed.artifacts.files import atomic_write
from synthmed.errors import SynthmedError

METADATA_VERSION = 1
STAGE_CONFIG = "controlnet.yaml"  # a ControlNet's own settings (a run may hold several, trained later)
CANDIDATES = "candidates.pt"  # controlnet/: the training label maps 3D generation draws from
DISTILL_CONFIG = "distill.yaml"  # distilled/: the settings the distilled stage was started with


def controlnet_stage_dir(condition: str) -> str:
    """The run sub-folder of the ControlNet following ``condition`` (mask: the historical 'controlnet')."""
    return "controlnet" if condition == "mask" else f"controlnet-{condition}"


def _condition_of(folder: str) -> str:
    return "mask" if folder == "controlnet" else folder.removeprefix("controlnet-")


class ControlNetMetadata(BaseModel):
    """What generation needs beside a ControlNet's weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    edge_sigma: float = 1.5  # 2D edges/sobel: the Canny sigma its structure maps were made with
    num_labels: int = 2  # 3D: label values of its label maps, background included
    encoding: Literal["onehot", "bits"] = "onehot"  # 3D: how label maps become channels
    quality_bounds: dict[str, tuple[float, float]] = {}  # 3D: per-label intensity bounds (quality check)
    channel_quality_bounds: list[dict[str, tuple[float, float]]] = []  # 3D, several channels: each one's

    def bounds_per_channel(self) -> list[dict[str, tuple[float, float]]]:
        """The quality check's bounds of every image channel (one channel: ``quality_bounds``)."""
        return self.channel_quality_bounds or [self.quality_bounds]


class RunMetadata(BaseModel):
    """``metadata.json``: what loading a trained run needs beside config.yaml, like a MONAI bundle's
    metadata.json or diffusers' model_index.json. Derived from the exported weights after each stage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = METADATA_VERSION
    class_names: list[str]  # in the order of the UNet's class labels
    scale_factor: float  # the latent scale the diffusion UNet was trained with
    spacing: tuple[float, float, float] | None = None  # 3D: the default voxel spacing (mm)
    controlnets: dict[str, ControlNetMetadata] = {}  # by the condition each follows

    @classmethod
    def from_weights(cls, diffusion: dict[str, Any], controlnets: dict[str, dict[str, Any]]) -> RunMetadata:
        """From the ``extra`` entries of the exported diffusion and ControlNet weights."""
        fields = set(ControlNetMetadata.model_fields)
        return cls(
            class_names=list(diffusion["class_names"]),
            scale_factor=float(diffusion["scale_factor"]),
            spacing=diffusion.get("spacing"),
            controlnets={
                condition: ControlNetMetadata(**{k: v for k, v in extra.items() if k in fields})
                for condition, extra in controlnets.items()
            },
        )


@dataclass(frozen=True)
class RunDir:
    """Every path of a run folder, and its metadata."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def metadata_file(self) -> Path:
        return self.root / "metadata.json"

    def stage(self, name: str) -> Path:
        """A stage's folder: autoencoder, diffusion, or a ControlNet's (see :func:`controlnet_stage_dir`)."""
        return self.root / name

    def weights(self, stage: str) -> Path:
        """A stage's exported weights (EMA and raw)."""
        return self.stage(stage) / "model.pt"

    def controlnet(self, condition: str) -> Path:
        return self.stage(controlnet_stage_dir(condition))

    @property
    def distilled(self) -> Path:
        return self.stage("distilled")

    def student(self, steps: int) -> Path:
        """The folder of the distilled student that samples in ``steps`` steps."""
        return self.distilled / f"steps-{steps}"

    @property
    def lite_decoder(self) -> Path:
        """The folder of the lightweight decoder distilled from the run's autoencoder decoder."""
        return self.distilled / "decoder"

    def distilled_steps(self) -> list[int]:
        """Step counts of the finished distilled students (those with exported weights), fewest first."""
        found = [p.parent.name.removeprefix("steps-") for p in self.distilled.glob("steps-*/model.pt")]
        return sorted(int(n) for n in found if n.isdigit())

    @property
    def candidates(self) -> Path:
        return self.controlnet("mask") / CANDIDATES

    def latents(self, autoencoder_sha256: str) -> Path:
        """The training latents cached for one version of the autoencoder weights."""
        return self.stage("diffusion") / f"latents-{autoencoder_sha256[:16]}.pt"

    def is_trained(self) -> bool:
        return self.config.is_file() and self.weights("diffusion").is_file()

    def metadata(self) -> RunMetadata:
        """metadata.json, or for a run trained before it existed the same read from its weights."""
        if not self.metadata_file.is_file():
            return self._metadata_from_weights()
        try:
            values = json.loads(self.metadata_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SynthmedError(f"unreadable run metadata ({exc})", path=self.metadata_file) from exc
        version = values.get("schema_version") if isinstance(values, dict) else None
        if isinstance(version, int) and version > METADATA_VERSION:
            raise SynthmedError(
                f"written by a newer synthmed (metadata schema {version}); upgrade synthmed to load this run",
                path=self.metadata_file,
            )
        try:
            return RunMetadata.model_validate(values)
        except ValidationError as exc:
            raise SynthmedError(f"invalid run metadata: {exc}", path=self.metadata_file) from exc

    def write_metadata(self) -> RunMetadata:
        """Write metadata.json from the exported weights (after a stage is trained); returns it."""
        metadata = self._metadata_from_weights()
        with atomic_write(self.metadata_file) as tmp:
            tmp.write_text(metadata.model_dump_json(indent=1) + "\n")
        return metadata

    def _metadata_from_weights(self) -> RunMetadata:
        diffusion = ckpt.load(self.weights("diffusion"))["extra"]
        controlnets = {
            _condition_of(path.parent.name): ckpt.load(path)["extra"]
            for path in sorted(self.root.glob("controlnet*/model.pt"))
            if path.parent.name == "controlnet" or path.parent.name.startswith("controlnet-")
        }
        return RunMetadata.from_weights(diffusion, controlnets)
