"""Writing a file so that readers see the old content or the new, never half of it; and file checksums."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; it replaces ``path`` when the block succeeds.

    A process killed mid-write leaves the previous file intact and at most a ``.<name>.tmp<pid>`` file,
    which the trainer sweeps up on resume. ``suffix``: an ending the writer needs to see on the temporary
    name (``.nii.gz`` makes nibabel compress); it is then moved from the name to the end of the temporary one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.name[: -len(suffix)] if suffix else path.name
    tmp = path.with_name(f".{stem}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when the write failed


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
