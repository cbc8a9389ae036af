"""Ways to damage a stored chunk file, as a failing disk or a careless hand would."""

from __future__ import annotations

import os
from pathlib import Path


def flip_bit(path: Path, at: int = 5, bit: int = 4) -> None:
    """Flip one bit of the byte at offset ``at``."""
    with path.open("r+b") as f:
        f.seek(at)
        b = f.read(1)[0]
        f.seek(at)
        f.write(bytes([b ^ (1 << bit)]))


def truncate(path: Path, lose: int | None = None) -> None:
    """Cut ``lose`` bytes off the end (default: half the file)."""
    size = path.stat().st_size
    os.truncate(path, size - (size // 2 if lose is None else lose))
