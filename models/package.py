"""Model packages: build, sign, pack as tar, open (safely), and verify a directory or tar.

A package is a directory (or a tar of one, members at its root) holding the files the manifest names,
`manifest.json` and, when signed, `manifest.sig.json`: a detached ed25519 signature over
`Manifest.canonical_bytes()`. The manifest lists every file's size and sha256, so one signature covers
the whole package.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from models.archive import DEFAULT_MAX_ARCHIVE_BYTES, extract_tar, read_member, write_tar
from models.errors import (
    HashMismatch,
    ManifestInvalid,
    MissingFile,
    PackageError,
    SignatureInvalid,
    SignatureMissing,
    SizeMismatch,
    UnexpectedFile,
    UnsafePath,
)
from models.signing import Ed25519PrivateKey, Ed25519PublicKey, sign_manifest, verify_manifest
from protocols.datatypes import Datatype
from protocols.manifest import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    Manifest,
    ModelFormat,
    PackageFile,
    Precision,
    TensorSpec,
)
from protocols.signature import ManifestSignature

__all__ = [
    "DEFAULT_MAX_ARCHIVE_BYTES",
    "ModelPackage",
    "build_package",
    "extract_tar",
    "file_sha256",
    "open_package",
    "pack_tar",
    "package_sha256",
    "parse_manifest",
    "read_manifest",
    "sign_package",
    "tensor_specs_from_onnx",
    "verify_package",
]

CHUNK_SIZE = 1 << 20
_RESERVED = (MANIFEST_FILE, SIGNATURE_FILE)

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class ModelPackage:
    """An opened package: its directory, parsed manifest and signature (None if unsigned)."""

    path: Path
    manifest: Manifest
    signature: ManifestSignature | None

    @property
    def model_path(self) -> Path:
        """Absolute path of the model file the manifest names."""
        return self.path / self.manifest.model_file

    @property
    def sha256(self) -> str:
        """Content address of the package (see `package_sha256`)."""
        return package_sha256(self.manifest)


# --- reading -------------------------------------------------------------------------------------


def _reasons(exc: ValidationError) -> str:
    """pydantic's reasons on one line: 'field.path: message; ...'."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors())


def parse_manifest(data: bytes, source: str = MANIFEST_FILE) -> Manifest:
    """Parse manifest.json bytes; ManifestInvalid with the pydantic reason on failure."""
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise ManifestInvalid(f"{source}: {_reasons(exc)}") from exc


def _parse_signature(data: bytes, source: str = SIGNATURE_FILE) -> ManifestSignature:
    try:
        return ManifestSignature.model_validate_json(data)
    except ValidationError as exc:
        raise SignatureInvalid(f"{source} is malformed: {_reasons(exc)}") from exc


def read_manifest(path: PathLike) -> tuple[Manifest, ManifestSignature | None]:
    """The manifest and signature of a package directory or tar, without extracting anything."""
    p = Path(path)
    if p.is_dir():
        manifest_path = p / MANIFEST_FILE
        if not manifest_path.is_file() or manifest_path.is_symlink():
            raise ManifestInvalid(f"{MANIFEST_FILE} is missing from package {str(p)!r}")
        manifest = parse_manifest(manifest_path.read_bytes(), str(manifest_path))
        sig_path = p / SIGNATURE_FILE
        if sig_path.is_symlink():
            raise UnsafePath(f"{SIGNATURE_FILE} in {str(p)!r} is a symlink")
        signature = _parse_signature(sig_path.read_bytes(), str(sig_path)) if sig_path.exists() else None
        return manifest, signature
    try:
        with tarfile.open(p, "r:*") as tar:
            raw_manifest = read_member(tar, MANIFEST_FILE)
            raw_signature = read_member(tar, SIGNATURE_FILE)
    except (tarfile.TarError, OSError) as exc:
        raise ManifestInvalid(f"{str(p)!r} is neither a package directory nor a readable tar: {exc}") from exc
    if raw_manifest is None:
        raise ManifestInvalid(f"{MANIFEST_FILE} is missing from archive {str(p)!r}")
    manifest = parse_manifest(raw_manifest, f"{p}:{MANIFEST_FILE}")
    signature = None if raw_signature is None else _parse_signature(raw_signature, f"{p}:{SIGNATURE_FILE}")
    return manifest, signature


def package_sha256(source: PathLike | Manifest | ModelPackage) -> str:
    """Content address of a package: hex sha256 of its manifest's canonical bytes.

    The manifest pins every file by sha256 and size, so this hash addresses the package's whole
    content. The signature is not part of it: re-signing (e.g. by the hub) keeps the address.
    """
    if isinstance(source, ModelPackage):
        manifest = source.manifest
    elif isinstance(source, Manifest):
        manifest = source
    else:
        manifest, _ = read_manifest(source)
    return hashlib.sha256(manifest.canonical_bytes()).hexdigest()


def open_package(
    path: PathLike, *, extract_to: PathLike | None = None, max_total_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES
) -> ModelPackage:
    """Open a package directory, or safely extract a package tar and open that.

    A tar is extracted into `extract_to` (absent or empty) or, if None, into a new temporary
    directory that the caller owns and removes (`ModelPackage.path`). Nothing is verified here:
    call `verify_package` before trusting the files.
    """
    p = Path(path)
    if not p.exists():
        raise PackageError(f"package {str(p)!r} does not exist")
    if p.is_dir():
        manifest, signature = read_manifest(p)
        return ModelPackage(path=p, manifest=manifest, signature=signature)
    own_temp = extract_to is None
    target = Path(tempfile.mkdtemp(prefix="edgefleet-pkg-")) if extract_to is None else Path(extract_to)
    try:
        extract_tar(p, target, max_total_bytes=max_total_bytes)
        manifest, signature = read_manifest(target)
    except BaseException:
        if own_temp:  # the caller never saw this directory, so nobody else would remove it
            shutil.rmtree(target, ignore_errors=True)
        raise
    return ModelPackage(path=target, manifest=manifest, signature=signature)


# --- verifying -----------------------------------------------------------------------------------


def file_sha256(path: PathLike) -> tuple[str, int]:
    """Hex sha256 and size of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _present_files(root: Path) -> set[str]:
    """Relative POSIX paths of every regular file under `root`; UnsafePath on links and specials."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise UnsafePath(f"package entry {rel!r} is a symlink")
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise UnsafePath(f"package entry {rel!r} is not a regular file or directory")
            if stat.S_ISREG(mode):
                found.add(rel)
    return found


def _check_file(root: Path, entry: PackageFile) -> None:
    actual_sha, actual_size = file_sha256(root / entry.path)
    if actual_size != entry.size:
        raise SizeMismatch(f"file {entry.path!r}: manifest says {entry.size} bytes, found {actual_size}")
    if actual_sha != entry.sha256:
        raise HashMismatch(f"file {entry.path!r}: manifest sha256 {entry.sha256}, actual {actual_sha}")


def verify_package(
    pkg: ModelPackage,
    trusted_keys: Mapping[str, Ed25519PublicKey],
    *,
    require_signature: bool = True,
) -> None:
    """Check the signature, then that the files are exactly those of the manifest with its sizes and hashes.

    With `require_signature=False` an unsigned package passes; a signature that is present is
    still checked against `trusted_keys`. Raises a PackageError subclass naming what is wrong.
    """
    manifest = pkg.manifest
    if pkg.signature is None:
        if require_signature:
            raise SignatureMissing(f"package {manifest.name!r} version {manifest.version!r} has no {SIGNATURE_FILE}")
    else:
        verify_manifest(manifest, pkg.signature, trusted_keys)
    present = _present_files(pkg.path)
    for entry in manifest.files:
        if entry.path not in present:
            raise MissingFile(f"file {entry.path!r} named in the manifest is missing from the package")
    extra = sorted(present - {f.path for f in manifest.files} - set(_RESERVED))
    if extra:
        raise UnexpectedFile(f"package holds files the manifest does not name: {', '.join(map(repr, extra))}")
    for entry in manifest.files:
        _check_file(pkg.path, entry)


# --- writing -------------------------------------------------------------------------------------


def _write_json_atomic(path: Path, obj: object) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def sign_package(path: PathLike, private_key: Ed25519PrivateKey) -> ModelPackage:
    """(Re)sign a package directory: write manifest.sig.json for its current manifest."""
    p = Path(path)
    if not p.is_dir():
        raise PackageError(f"can only sign a package directory, not {str(p)!r}")
    manifest, _ = read_manifest(p)
    signature = sign_manifest(manifest, private_key)
    _write_json_atomic(p / SIGNATURE_FILE, signature.model_dump(mode="json"))
    return ModelPackage(path=p, manifest=manifest, signature=signature)


def build_package(
    model_files: PathLike | Sequence[PathLike],
    out_dir: PathLike,
    *,
    name: str,
    version: str,
    inputs: Iterable[TensorSpec],
    outputs: Iterable[TensorSpec],
    max_batch_size: int,
    format: ModelFormat = "onnx",
    precision: Sequence[Precision] = ("fp32",),
    description: str = "",
    private_key: Ed25519PrivateKey | None = None,
) -> ModelPackage:
    """Write a package directory: the files (the first is the model), manifest.json, and a signature if keyed.

    `out_dir` must be absent or empty. The package is assembled in a sibling temp directory and
    renamed into place, so a crash never leaves a half-built package at `out_dir`.
    """
    sources = [Path(model_files)] if isinstance(model_files, str | os.PathLike) else [Path(f) for f in model_files]
    if not sources:
        raise PackageError("a package needs at least one file")
    names = [s.name for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1} | (set(names) & set(_RESERVED)))
    if duplicates:
        raise PackageError(f"package file names clash or are reserved: {', '.join(duplicates)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PackageError(f"output {str(out)!r} exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        entries = []
        for source in sources:
            if not source.is_file():
                raise MissingFile(f"source file {str(source)!r} does not exist")
            shutil.copyfile(source, staging / source.name)
            sha, size = file_sha256(staging / source.name)
            entries.append(PackageFile(path=source.name, sha256=sha, size=size))
        try:
            manifest = Manifest(
                name=name,
                version=version,
                format=format,
                model_file=sources[0].name,
                inputs=tuple(inputs),
                outputs=tuple(outputs),
                max_batch_size=max_batch_size,
                precision=tuple(precision),
                files=tuple(entries),
                description=description,
            )
        except ValidationError as exc:
            raise ManifestInvalid(f"manifest for {name!r} version {version!r}: {_reasons(exc)}") from exc
        _write_json_atomic(staging / MANIFEST_FILE, manifest.model_dump(mode="json"))
        signature = None
        if private_key is not None:
            signature = sign_manifest(manifest, private_key)
            _write_json_atomic(staging / SIGNATURE_FILE, signature.model_dump(mode="json"))
        staging.chmod(0o755)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ModelPackage(path=out, manifest=manifest, signature=signature)


def pack_tar(package_dir: PathLike, out_path: PathLike) -> Path:
    """Write a deterministic tar of a package: manifest, signature and the manifest's files, nothing else.

    The same package always gives a byte-identical archive (see `models.archive.write_tar`).
    """
    src = Path(package_dir)
    manifest, signature = read_manifest(src)
    names = [MANIFEST_FILE, *(f.path for f in manifest.files)]
    if signature is not None:
        names.append(SIGNATURE_FILE)
    return write_tar(src, names, out_path)


# ONNX TensorProto element types -> V2 datatypes (numbers from onnx.proto, stable across versions).
_ONNX_DATATYPES: dict[int, Datatype] = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
}


def tensor_specs_from_onnx(path: PathLike) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs of an ONNX graph as TensorSpecs; symbolic or unknown dimensions become -1."""
    try:
        import onnx
    except ImportError as exc:
        raise PackageError("reading ONNX graphs needs the 'onnx' package (pip install onnx)") from exc
    try:
        graph = onnx.load(os.fspath(path), load_external_data=False).graph
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError...: all mean "not a model"
        raise ManifestInvalid(f"cannot read ONNX model {str(path)!r}: {exc}") from exc
    initializers = {init.name for init in graph.initializer}

    def spec(value: Any) -> TensorSpec:
        tensor_type = value.type.tensor_type
        datatype = _ONNX_DATATYPES.get(tensor_type.elem_type)
        if datatype is None:
            raise ManifestInvalid(
                f"ONNX tensor {value.name!r} has element type {tensor_type.elem_type}, which has no V2 datatype"
            )
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor_type.shape.dim)
        try:
            return TensorSpec(name=value.name, datatype=datatype, shape=shape)
        except ValidationError as exc:
            raise ManifestInvalid(f"ONNX tensor {value.name!r}: {_reasons(exc)}") from exc

    # Older exporters list initializers among the graph inputs; they are weights, not inputs.
    inputs = tuple(spec(v) for v in graph.input if v.name not in initializers)
    outputs = tuple(spec(v) for v in graph.output)
    return inputs, outputs
