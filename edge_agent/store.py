"""The on-disk model store: verified package versions per model and an atomically switched active pointer.

Layout under `root` (= state_dir/models)::

    <name>/<version>/          a verified package directory, immutable once visible
    <name>/active.json         {"active": "2", "previous": "1"}, replaced atomically
    <name>/.incoming-*         a copy in progress; never read, removed on open()

A version becomes visible only by `os.rename` of a fully copied, fsynced and verified directory, and
the pointer only by `os.replace` of a fsynced temp file, so a crash leaves either the old or the new state.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config import AgentConfig
from edge_agent.errors import NotFound, StoreError
from models.atomic import fsync_dir, write_atomic
from models.errors import PackageError
from models.package import ModelPackage, open_package, package_sha256, verify_package
from models.signing import Ed25519PublicKey, load_trusted_keys
from protocols.common import is_safe_name
from protocols.manifest import MANIFEST_FILE

__all__ = ["ModelStore", "Pointer", "collect", "discover", "find_packages", "import_into", "version_key"]

logger = logging.getLogger(__name__)

POINTER_FILE = "active.json"
_INCOMING = ".incoming-"


@dataclass(frozen=True)
class Pointer:
    """The active version of a model and the one before it (the rollback target)."""

    active: str | None = None
    previous: str | None = None


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders "2" < "10" and "1.9" < "1.10"."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[._+-]", version))


def find_packages(root: Path) -> Iterator[Path]:
    """Every directory under `root` (itself included) that holds a manifest.json, sorted."""
    if (root / MANIFEST_FILE).is_file():
        yield root
        return
    for manifest in sorted(root.rglob(MANIFEST_FILE)):
        yield manifest.parent


def _fsync_tree(path: Path) -> None:
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


class ModelStore:
    """Versions per model on disk with an active pointer; blocking I/O (call from a worker thread)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self) -> None:
        """Create the root and remove what a crash left behind (incoming copies, pointer temp files)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for model_dir in self.root.iterdir():
            if not model_dir.is_dir():
                continue
            for entry in model_dir.iterdir():
                if entry.name.startswith(_INCOMING):
                    logger.warning("removing incomplete install %s", entry)
                    shutil.rmtree(entry, ignore_errors=True)
                elif entry.name.startswith(f".{POINTER_FILE}.") and entry.name.endswith(".tmp"):
                    entry.unlink(missing_ok=True)

    # --- reading ---------------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Names of models with at least one installed version."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        """Installed versions of a model, oldest first."""
        model_dir = self._model_dir(name)
        if not model_dir.is_dir():
            return []
        found = [p.name for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(found, key=version_key)

    def path(self, name: str, version: str) -> Path:
        """Directory of an installed version; NotFound if absent."""
        path = self._model_dir(name) / version
        if not is_safe_name(version) or not (path / MANIFEST_FILE).is_file():
            raise NotFound(f"model {name!r} has no installed version {version!r}")
        return path

    def package(self, name: str, version: str) -> ModelPackage:
        """The installed package (already verified at install)."""
        try:
            return open_package(self.path(name, version))
        except PackageError as exc:
            raise StoreError(f"installed package {name}:{version} is unreadable: {exc}") from exc

    def pointer(self, name: str) -> Pointer:
        """The model's active/previous pointer (empty if never activated)."""
        path = self._model_dir(name) / POINTER_FILE
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return Pointer()
        except (OSError, ValueError) as exc:
            raise StoreError(f"pointer {path} is unreadable: {exc}") from exc
        if not isinstance(data, dict):
            raise StoreError(f"pointer {path} is not a JSON object")
        return Pointer(active=data.get("active"), previous=data.get("previous"))

    def active(self, name: str) -> str | None:
        """The active version of a model, or None."""
        return self.pointer(name).active

    # --- writing ---------------------------------------------------------------------------------

    def install(
        self,
        source: Path,
        trusted_keys: Mapping[str, Ed25519PublicKey],
        *,
        verify: bool = True,
    ) -> ModelPackage:
        """Copy a package into the store, verify the copy, and make it visible atomically; idempotent."""
        try:
            src = open_package(source)
        except PackageError as exc:
            raise StoreError(f"cannot open package {str(source)!r}: {exc}") from exc
        name, version = src.manifest.name, src.manifest.version
        model_dir = self._model_dir(name)
        final = model_dir / version
        if final.exists():
            existing = self.package(name, version)
            if package_sha256(existing) != package_sha256(src):
                raise StoreError(f"{name}:{version} is already installed with different content")
            return existing
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_INCOMING}{version}-", dir=model_dir))
        try:
            shutil.copytree(src.path, tmp, dirs_exist_ok=True, symlinks=True)
            # Verify the copy, not the source, so what is checked is exactly what will run.
            copy = open_package(tmp)
            if verify:
                verify_package(copy, trusted_keys, require_signature=True)
            _fsync_tree(tmp)
            os.rename(tmp, final)
            fsync_dir(model_dir)
        except PackageError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"package {name}:{version} from {str(source)!r} failed verification: {exc}") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("installed model %s version %s", name, version)
        return self.package(name, version)

    def activate(self, name: str, version: str) -> Pointer:
        """Make `version` active; the old active becomes `previous`."""
        self.path(name, version)
        current = self.pointer(name)
        if current.active == version:
            return current
        pointer = Pointer(active=version, previous=current.active)
        self._write_pointer(name, pointer)
        logger.info("model %s: active version %s (previous %s)", name, version, pointer.previous)
        return pointer

    def rollback(self, name: str) -> Pointer:
        """Switch back to the previous version (the current one becomes previous)."""
        current = self.pointer(name)
        if current.previous is None:
            raise StoreError(f"model {name!r} has no previous version to roll back to")
        self.path(name, current.previous)
        pointer = Pointer(active=current.previous, previous=current.active)
        self._write_pointer(name, pointer)
        logger.info("model %s: rolled back to %s", name, pointer.active)
        return pointer

    def remove(self, name: str, version: str) -> None:
        """Delete an installed version that is neither active nor previous."""
        pointer = self.pointer(name)
        if version in (pointer.active, pointer.previous):
            raise StoreError(f"{name}:{version} is referenced by the active pointer")
        path = self.path(name, version)
        # Hide it first (rename is atomic), then delete at leisure.
        hidden = path.with_name(f"{_INCOMING}removed-{version}")
        os.rename(path, hidden)
        shutil.rmtree(hidden, ignore_errors=True)

    def prune(self, name: str, keep: Collection[str] = ()) -> list[str]:
        """Delete installed versions other than active, previous and `keep`; returns the removed ones.

        Active and previous stay on disk so a rollback is instant; older versions only cost space.
        """
        pointer = self.pointer(name)
        protected = {pointer.active, pointer.previous, *keep}
        removed = [v for v in self.versions(name) if v not in protected]
        for version in removed:
            self.remove(name, version)
        if removed:
            logger.info("model %s: removed old version(s) %s from disk", name, ", ".join(removed))
        return removed

    def _write_pointer(self, name: str, pointer: Pointer) -> None:
        data = json.dumps({"active": pointer.active, "previous": pointer.previous}).encode()
        write_atomic(self._model_dir(name) / POINTER_FILE, data)

    def _model_dir(self, name: str) -> Path:
        if not is_safe_name(name):
            raise NotFound(f"invalid model name {name!r}")
        return self.root / name


def discover(
    model_dirs: list[Path], trusted_keys: Mapping[str, Ed25519PublicKey], *, verify: bool
) -> list[ModelPackage]:
    """Open (and verify) every package under `model_dirs`, for serving in place."""
    packages: list[ModelPackage] = []
    for root in model_dirs:
        if not root.is_dir():
            raise StoreError(f"model directory {str(root)!r} does not exist")
        for path in find_packages(root):
            try:
                pkg = open_package(path)
                if verify:
                    verify_package(pkg, trusted_keys, require_signature=True)
            except PackageError as exc:
                raise StoreError(f"package {str(path)!r} failed verification: {exc}") from exc
            packages.append(pkg)
    return packages


def import_into(
    store: ModelStore,
    model_dirs: list[Path],
    trusted_keys: Mapping[str, Ed25519PublicKey],
    *,
    verify: bool,
) -> None:
    """Install every package under `model_dirs`; a model with no active version gets its newest."""
    for root in model_dirs:
        if not root.is_dir():
            raise StoreError(f"model directory {str(root)!r} does not exist")
        for path in find_packages(root):
            store.install(path, trusted_keys, verify=verify)
    for name in store.models():
        if store.active(name) is None:
            store.activate(name, store.versions(name)[-1])


def collect(config: AgentConfig) -> tuple[list[ModelPackage], dict[str, str]]:
    """The packages to serve and the active version per model, per the config (blocking I/O).

    With a state_dir, model_dirs are imported into the store and its active versions (plus versions
    pinned by pipelines) are served; without one (standalone only) model_dirs are served in place.
    """
    keys = load_trusted_keys(config.trusted_keys) if config.trusted_keys else {}
    verify = config.verify_packages
    if config.state_dir is None:
        packages = discover(config.model_dirs, keys, verify=verify)
        newest: dict[str, str] = {}
        for pkg in packages:
            name, version = pkg.manifest.name, pkg.manifest.version
            if name not in newest or version_key(version) > version_key(newest[name]):
                newest[name] = version
        return packages, newest
    store = ModelStore(config.state_dir / "models")
    store.open()
    import_into(store, config.model_dirs, keys, verify=verify)
    return served(store, store.models(), config)


def served(store: ModelStore, models: Iterable[str], config: AgentConfig) -> tuple[list[ModelPackage], dict[str, str]]:
    """The packages to serve from `store`: the active version of each of `models` plus the versions the
    config's pipelines pin; and the active version per model (blocking I/O; the store is only read)."""
    wanted: dict[tuple[str, str], None] = {}
    active: dict[str, str] = {}
    for name in models:
        current = store.active(name)
        if current is not None:
            active[name] = current
            wanted[(name, current)] = None
    for spec in config.pipelines:
        if spec.version is not None:
            wanted[(spec.model, spec.version)] = None
    return [store.package(name, version) for name, version in wanted], active
