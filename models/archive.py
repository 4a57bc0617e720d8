"""Safe tar I/O for model packages: strict extraction and deterministic archives. No manifest logic here."""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from models.errors import MissingFile, PackageError, UnsafePath

__all__ = ["DEFAULT_MAX_ARCHIVE_BYTES", "MAX_ARCHIVE_MEMBERS", "extract_tar", "read_member", "write_tar"]

CHUNK_SIZE = 1 << 20
# Edge devices have small disks; an archive larger than this is refused before it fills one.
DEFAULT_MAX_ARCHIVE_BYTES = 4 << 30
MAX_ARCHIVE_MEMBERS = 10_000

PathLike = str | os.PathLike[str]


def read_member(tar: tarfile.TarFile, name: str) -> bytes | None:
    """The bytes of root-level member `name` (also as './name'); None if absent; UnsafePath if not a file."""
    for candidate in (name, f"./{name}"):
        try:
            member = tar.getmember(candidate)
        except KeyError:
            continue
        if not member.isreg():
            raise UnsafePath(f"archive member {candidate!r} is not a regular file")
        fh = tar.extractfile(member)
        if fh is None:  # pragma: no cover - regular members always have a file object
            return None
        with fh:
            return fh.read()
    return None


def _member_path(name: str) -> PurePosixPath | None:
    """The safe relative path of an archive member (None for the root '.'); UnsafePath otherwise."""
    if not name or name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise UnsafePath(f"archive member {name!r} has an absolute or non-POSIX path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafePath(f"archive member {name!r} escapes the package directory with '..'")
    return PurePosixPath(*parts) if parts else None


def _describe_type(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symlink to {member.linkname!r}"
    if member.islnk():
        return f"a hardlink to {member.linkname!r}"
    if member.isdev():
        return "a device or fifo"
    return f"an unsupported entry (type {member.type!r})"


def _checked_members(tar: tarfile.TarFile, max_total_bytes: int) -> list[tuple[tarfile.TarInfo, PurePosixPath]]:
    """Every member with its safe path, after checking them all (so a bad one extracts nothing)."""
    checked: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
    seen: set[PurePosixPath] = set()
    total = 0
    for index, member in enumerate(tar):
        if index >= MAX_ARCHIVE_MEMBERS:
            raise UnsafePath(f"archive has more than {MAX_ARCHIVE_MEMBERS} members")
        rel = _member_path(member.name)
        if not (member.isreg() or member.isdir()):
            raise UnsafePath(f"archive member {member.name!r} is {_describe_type(member)}")
        if rel is None:
            continue
        if rel in seen:
            raise UnsafePath(f"archive member {member.name!r} appears twice")
        seen.add(rel)
        total += member.size if member.isreg() else 0
        if total > max_total_bytes:
            raise UnsafePath(f"archive files exceed the size limit of {max_total_bytes} bytes")
        checked.append((member, rel))
    return checked


def extract_tar(archive: PathLike, dest: PathLike, *, max_total_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES) -> Path:
    """Extract a tar (plain or compressed) into `dest` (absent or empty): regular files and directories only.

    Absolute paths, '..', symlinks, hardlinks, devices, duplicate members, and archives whose files
    add up to more than `max_total_bytes` raise UnsafePath before anything is written.
    """
    dest_path = Path(dest)
    dest_path.mkdir(parents=True, exist_ok=True)
    if any(dest_path.iterdir()):
        raise PackageError(f"extraction directory {str(dest_path)!r} is not empty")
    root = dest_path.resolve()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        with tarfile.open(Path(archive), "r:*") as tar:
            for member, rel in _checked_members(tar, max_total_bytes):
                target = root.joinpath(*rel.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - regular members always have one
                    raise UnsafePath(f"archive member {member.name!r} has no data")
                # O_EXCL | O_NOFOLLOW: never write through anything that is already there.
                with source, os.fdopen(os.open(target, flags, 0o644), "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK_SIZE)
    except (tarfile.TarError, EOFError) as exc:
        raise PackageError(f"cannot read archive {str(archive)!r}: {exc}") from exc
    return dest_path


def _tarinfo(name: str, kind: bytes, size: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar(src_dir: PathLike, names: Iterable[str], out_path: PathLike) -> Path:
    """Write a byte-reproducible tar of `names` (relative POSIX paths under `src_dir`), atomically.

    Members are sorted, with their parent directories, mtime 0, uid/gid 0, no owner names,
    mode 0644 (files) / 0755 (directories).
    """
    src = Path(src_dir)
    files = sorted(set(names))
    dirs = sorted({str(p) for n in files for p in PurePosixPath(n).parents if str(p) != "."})
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with open(tmp, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for d in dirs:
                    tar.addfile(_tarinfo(d, tarfile.DIRTYPE, 0, 0o755))
                for n in files:
                    file_path = src / n
                    if not file_path.is_file() or file_path.is_symlink():
                        raise MissingFile(f"file {n!r} is missing from {str(src)!r} (or is not a regular file)")
                    with open(file_path, "rb") as fh:
                        size = os.fstat(fh.fileno()).st_size
                        tar.addfile(_tarinfo(n, tarfile.REGTYPE, size, 0o644), fh)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
