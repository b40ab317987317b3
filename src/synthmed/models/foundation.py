"""The foundation 2D autoencoder shipped with synthmed (weights/ beside this file, trained by
synthmed.training.foundation; see weights/MODEL_CARD.md): found, checked against its recorded sha256 and
architecture, and loaded, with a one-line error naming the file and the fix for every way that can fail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import AutoencoderKL
from safetensors import SafetensorError
from safetensors.torch import load_file

from synthmed.artifacts.files import atomic_write, file_sha256
from synthmed.config import AutoencoderArch
from synthmed.errors import SynthmedError
from synthmed.models.builders import build_autoencoder

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = "foundation-ae-64.safetensors"
#: Beside the weights: their sha256, architecture, training steps and metrics (written with the weights).
CARD_FILE = "foundation-ae-64.json"
REINSTALL = "reinstall synthmed (or git checkout the file), or set autoencoder.source: train"


def shipped_card() -> dict[str, Any]:
    """The shipped weights' record: sha256, arch, steps, per-modality reconstruction metrics."""
    path = WEIGHTS_DIR / CARD_FILE
    if not path.exists():
        raise SynthmedError(f"the foundation autoencoder's record is missing; {REINSTALL}", path=path)
    return json.loads(path.read_text())


def _check_shipped(path: Path, card: dict[str, Any]) -> None:
    if not path.exists():
        raise SynthmedError(f"the foundation autoencoder's weights are missing; {REINSTALL}", path=path)
    if file_sha256(path) != card["sha256"]:
        raise SynthmedError(
            f"the foundation autoencoder's weights do not match their recorded sha256 (truncated or "
            f"altered); {REINSTALL}",
            path=path,
        )


def foundation_weights(arch: AutoencoderArch, weights: Path | None = None) -> tuple[dict[str, Any], str]:
    """The state dict of the shipped foundation autoencoder (or of the local ``weights`` file instead) and its
    sha256, checked to fit ``arch``."""
    if weights is None:
        card, path = shipped_card(), WEIGHTS_DIR / WEIGHTS_FILE
        _check_shipped(path, card)
        if AutoencoderArch.model_validate(card["arch"]) != arch:
            raise SynthmedError(
                f"autoencoder.arch differs from the foundation autoencoder's {card['arch']}; use the small64 "
                "preset's autoencoder.arch, or set autoencoder.source: train to train your own",
                field="autoencoder.arch",
            )
    else:
        path = Path(weights)
        if not path.is_file():
            raise SynthmedError("autoencoder.weights: no such file", path=path)
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise SynthmedError(f"not a readable safetensors file ({exc}); {REINSTALL}", path=path) from exc
    _fits(arch, state, path)
    return state, file_sha256(path)


def _fits(arch: AutoencoderArch, state: dict[str, Any], path: Path) -> None:
    try:
        build_autoencoder(arch, 2).load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise SynthmedError(
            f"these weights are not a 2D greyscale AutoencoderKL with autoencoder.arch ({first})", path=path
        ) from exc


def load_foundation_autoencoder(arch: AutoencoderArch, weights: Path | None = None) -> AutoencoderKL:
    """The foundation autoencoder, on the CPU, in eval mode."""
    model = build_autoencoder(arch, 2)
    model.load_state_dict(foundation_weights(arch, weights)[0])
    return model.eval()


def foundation_export(state: dict[str, torch.Tensor], card: dict[str, Any], out_dir: Path) -> Path:
    """Write ``state`` as the shipped safetensors file and its record (with its sha256) in ``out_dir``."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / WEIGHTS_FILE
    with atomic_write(path, ".safetensors") as tmp:
        save_file({k: v.detach().float().contiguous().cpu() for k, v in state.items()}, tmp)
    record = {**card, "sha256": file_sha256(path), "file": WEIGHTS_FILE}
    (out_dir / CARD_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return path
