"""Networks read from a local file: synthmed never downloads weights, so pretrained ones come this way."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from synthmed.errors import SynthmedError


def load_local_network(path: Path, what: str) -> nn.Module:
    """A frozen network from a ``torch.export`` program (``.pt2``) or a TorchScript file, on the CPU.

    ``what`` names its role in the error message (e.g. "perceptual network").
    """
    path = Path(path)
    if not path.is_file():
        raise SynthmedError(f"{what} file not found", path=path)
    try:
        if path.suffix == ".pt2":
            net = torch.export.load(str(path)).module()
        else:
            net = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # torch raises many types on bad files
        raise SynthmedError(f"cannot load the {what} ({exc})", path=path) from exc
    for p in net.parameters():
        p.requires_grad_(False)
    return net
