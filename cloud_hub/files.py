"""Files that must survive a crash: written to a temp file, fsynced, and renamed into place."""

from __future__ import annotations

from pathlib import Path

from models.atomic import write_atomic

__all__ = ["private_dir", "write_atomic"]


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) with mode 0700 if missing; return it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
