"""Content-addressed artifact files: data-dir/artifacts/<sha[:2]>/<sha>.tar, written atomically."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from cloud_hub.errors import InvalidRequest
from cloud_hub.files import private_dir

CHUNK = 1 << 20
_SHA = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path: Path) -> tuple[str, int]:
    """Hex sha256 and size of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class ArtifactStore:
    """Stored package archives, addressed by the sha256 of their bytes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / ".incoming"

    def ensure(self) -> None:
        """Create the folders (0700)."""
        private_dir(self.root)
        private_dir(self.incoming)

    def path(self, sha256: str) -> Path:
        """Where the archive with this sha256 lives (it may not exist)."""
        if not _SHA.fullmatch(sha256):
            raise InvalidRequest(f"invalid artifact sha256 {sha256!r}")
        return self.root / sha256[:2] / f"{sha256}.tar"

    def temp_dir(self) -> Path:
        """A fresh private folder under .incoming for one upload (the caller removes it)."""
        self.ensure()
        return Path(tempfile.mkdtemp(prefix="push-", dir=self.incoming))

    def adopt(self, tar: Path) -> tuple[str, int]:
        """Move a finished tar into its content address (fsynced, renamed); return (sha256, size).

        A file already at that address has the same bytes by definition, so it is kept as it is.
        """
        sha, size = sha256_file(tar)
        target = self.path(sha)
        if target.exists():
            tar.unlink()
            return sha, size
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tar, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tar, 0o644)
        os.replace(tar, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return sha, size
