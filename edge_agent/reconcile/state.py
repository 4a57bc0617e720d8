"""What the reconciler keeps on disk under `state_dir/reconcile/` so that a restart resumes where it was. Layout::

desired.json   the latest accepted DesiredState, written (temp, fsync, rename) before acting on it
failures.json  {"revision": N, "models": {name: {"version", "error"}}}: versions that failed for
               revision N; they are not retried until a newer revision arrives (no retry loops)
downloads/     <sha256>.part (partial, resumed with Range) and <sha256>.tar (complete and checked)
staging/       <sha256>/: an extracted artifact being verified; removed at start and after install
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from models.atomic import write_atomic
from protocols.messages import DesiredState

__all__ = ["Failure", "ReconcileState"]

log = logging.getLogger(__name__)

DESIRED_FILE = "desired.json"
FAILURES_FILE = "failures.json"


@dataclass(frozen=True, slots=True)
class Failure:
    """A version that failed for a revision, and why."""

    version: str
    error: str


class ReconcileState:
    """The reconciler's files; blocking I/O (call from a worker thread)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.downloads = root / "downloads"
        self.staging = root / "staging"

    def open(self) -> None:
        """Create the directories and drop half-extracted staging copies (never trusted after a crash)."""
        self.downloads.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    # --- desired state -----------------------------------------------------------------------------

    def load_desired(self) -> DesiredState | None:
        """The last accepted desired state, or None (never received, or unreadable: logged)."""
        path = self.root / DESIRED_FILE
        try:
            return DesiredState.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            log.error("persisted desired state %s is unreadable, ignoring it: %s", path, exc)
            return None

    def save_desired(self, desired: DesiredState) -> None:
        """Persist `desired` atomically (the old or the new file survives a crash, never a mix)."""
        write_atomic(self.root / DESIRED_FILE, desired.model_dump_json().encode())

    # --- failures ------------------------------------------------------------------------------------

    def failures(self, revision: int) -> dict[str, Failure]:
        """Versions that failed for `revision`, by model name."""
        path = self.root / FAILURES_FILE
        try:
            data = json.loads(path.read_bytes())
            if data.get("revision") != revision:
                return {}
            return {str(n): Failure(str(f["version"]), str(f["error"])) for n, f in data["models"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("failure record %s is unreadable, ignoring it: %s", path, exc)
            return {}

    def record_failure(self, revision: int, name: str, failure: Failure) -> None:
        """Remember that `name` failed at `failure.version` for `revision` (older revisions are forgotten)."""
        models = {n: {"version": f.version, "error": f.error} for n, f in self.failures(revision).items()}
        models[name] = {"version": failure.version, "error": failure.error}
        write_atomic(self.root / FAILURES_FILE, json.dumps({"revision": revision, "models": models}).encode())

    # --- artifacts -----------------------------------------------------------------------------------

    def staging_dir(self, sha256: str) -> Path:
        """Where an artifact is extracted for verification."""
        return self.staging / sha256

    def prune_downloads(self, keep: set[str]) -> None:
        """Delete downloads (partial or complete) of artifacts no longer desired."""
        for entry in self.downloads.iterdir():
            if entry.name.split(".", 1)[0] not in keep:
                log.info("removing download %s (no longer desired)", entry.name)
                entry.unlink(missing_ok=True)
