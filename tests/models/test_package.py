"""Package build, tar, open and verify: every way a package can be broken is caught and named."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from models.errors import (
    HashMismatch,
    ManifestInvalid,
    MissingFile,
    PackageError,
    SignatureInvalid,
    SignatureMissing,
    SizeMismatch,
    UnexpectedFile,
    UnknownKey,
    UnsafePath,
)
from models.package import (
    ModelPackage,
    build_package,
    extract_tar,
    open_package,
    pack_tar,
    package_sha256,
    sign_package,
    tensor_specs_from_onnx,
    verify_package,
)
from models.signing import Ed25519PrivateKey, Ed25519PublicKey, generate_keypair, key_id, sign_manifest
from protocols.manifest import MANIFEST_FILE, SIGNATURE_FILE, TensorSpec

MODEL_BYTES = bytes(range(256)) * 8


@pytest.fixture
def signer() -> tuple[Ed25519PrivateKey, dict[str, Ed25519PublicKey]]:
    private, public = generate_keypair()
    return private, {key_id(public): public}


def build(tmp_path: Path, private: Ed25519PrivateKey | None, name: str = "pkg") -> ModelPackage:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "model.onnx").write_bytes(MODEL_BYTES)
    (src / "labels.txt").write_text("car\nperson\n")
    return build_package(
        [src / "model.onnx", src / "labels.txt"],
        tmp_path / name,
        name="detector",
        version="3",
        inputs=[TensorSpec(name="input", datatype="FP32", shape=(-1, 3, 8, 8))],
        outputs=[TensorSpec(name="scores", datatype="FP32", shape=(-1, 4))],
        max_batch_size=8,
        description="test package",
        private_key=private,
    )


@pytest.fixture
def pkg(tmp_path: Path, signer: tuple[Ed25519PrivateKey, dict[str, Ed25519PublicKey]]) -> ModelPackage:
    return build(tmp_path, signer[0])


def rewrite_manifest(pkg: ModelPackage, **changes: object) -> ModelPackage:
    path = pkg.path / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return open_package(pkg.path)


# --- build and round trip ------------------------------------------------------------------------


def test_build_writes_files_manifest_and_signature(pkg: ModelPackage, signer: tuple) -> None:
    assert sorted(p.name for p in pkg.path.iterdir()) == [
        "labels.txt",
        MANIFEST_FILE,
        SIGNATURE_FILE,
        "model.onnx",
    ]
    entry = pkg.manifest.file("model.onnx")
    assert entry.sha256 == hashlib.sha256(MODEL_BYTES).hexdigest()
    assert entry.size == len(MODEL_BYTES)
    assert pkg.manifest.model_file == "model.onnx"
    text = (pkg.path / MANIFEST_FILE).read_text()
    assert text.startswith('{\n  "description"')  # pretty, keys sorted
    assert open_package(pkg.path) == pkg
    verify_package(pkg, signer[1])


def test_round_trip_through_tar(pkg: ModelPackage, signer: tuple, tmp_path: Path) -> None:
    archive = pack_tar(pkg.path, tmp_path / "out" / "pkg.tar")
    opened = open_package(archive, extract_to=tmp_path / "extracted")
    assert opened.path == tmp_path / "extracted"
    assert opened.manifest == pkg.manifest
    assert opened.signature == pkg.signature
    verify_package(opened, signer[1])
    assert package_sha256(archive) == package_sha256(pkg.path) == opened.sha256


def test_open_tar_without_destination_uses_a_temp_dir(pkg: ModelPackage, signer: tuple, tmp_path: Path) -> None:
    opened = open_package(pack_tar(pkg.path, tmp_path / "pkg.tar"))
    try:
        assert opened.path.name.startswith("edgefleet-pkg-")
        verify_package(opened, signer[1])
    finally:
        for child in opened.path.iterdir():
            child.unlink()
        opened.path.rmdir()


def test_tar_is_deterministic(pkg: ModelPackage, tmp_path: Path) -> None:
    first = pack_tar(pkg.path, tmp_path / "a.tar").read_bytes()
    os.utime(pkg.path / "model.onnx", (1_700_000_000, 1_700_000_000))
    second = pack_tar(pkg.path, tmp_path / "b.tar").read_bytes()
    assert first == second
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)


def test_tar_leaves_out_files_the_manifest_does_not_name(pkg: ModelPackage, tmp_path: Path) -> None:
    (pkg.path / "notes.txt").write_text("scratch")
    with tarfile.open(pack_tar(pkg.path, tmp_path / "pkg.tar")) as tar:
        assert "notes.txt" not in tar.getnames()


def test_package_sha256_is_the_manifest_hash_and_ignores_the_signature(pkg: ModelPackage, tmp_path: Path) -> None:
    before = package_sha256(pkg.path)
    assert before == hashlib.sha256(pkg.manifest.canonical_bytes()).hexdigest()
    sign_package(pkg.path, generate_keypair()[0])
    assert package_sha256(pkg.path) == before
    assert package_sha256(rewrite_manifest(pkg, version="4")) != before


def test_unsigned_build_and_later_signing(tmp_path: Path, signer: tuple) -> None:
    unsigned = build(tmp_path, None)
    assert unsigned.signature is None
    assert not (unsigned.path / SIGNATURE_FILE).exists()
    with pytest.raises(SignatureMissing, match=re.escape("'detector' version '3' has no manifest.sig.json")):
        verify_package(unsigned, signer[1])
    verify_package(unsigned, {}, require_signature=False)
    signed = sign_package(unsigned.path, signer[0])
    verify_package(open_package(signed.path), signer[1])


def test_build_refuses_a_non_empty_output(pkg: ModelPackage, tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="exists and is not an empty directory"):
        build(tmp_path, None, name="pkg")


def test_build_with_an_invalid_manifest_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ManifestInvalid, match=r"inputs\.0\.shape|batch axis must come first"):
        build_package(
            tmp_path / "model.onnx",
            tmp_path / "out",
            name="m",
            version="1",
            inputs=[TensorSpec(name="x", datatype="FP32", shape=(3,))],
            outputs=[TensorSpec(name="y", datatype="FP32", shape=(-1,))],
            max_batch_size=4,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_build_rejects_clashing_or_reserved_file_names(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "manifest.json").write_text("{}")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(PackageError, match=re.escape("reserved: manifest.json")):
        build_package(
            [tmp_path / "model.onnx", tmp_path / "a" / "manifest.json"],
            tmp_path / "out",
            name="m",
            version="1",
            inputs=[TensorSpec(name="x", datatype="FP32", shape=(-1,))],
            outputs=[TensorSpec(name="y", datatype="FP32", shape=(-1,))],
            max_batch_size=4,
        )


# --- tampering -----------------------------------------------------------------------------------


def test_one_changed_byte_is_a_hash_mismatch(pkg: ModelPackage, signer: tuple) -> None:
    data = bytearray(MODEL_BYTES)
    data[100] ^= 0x01
    (pkg.path / "model.onnx").write_bytes(bytes(data))
    expected = hashlib.sha256(MODEL_BYTES).hexdigest()
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(HashMismatch, match=re.escape(f"'model.onnx': manifest sha256 {expected}, actual {actual}")):
        verify_package(pkg, signer[1])


def test_truncated_file_is_a_size_mismatch(pkg: ModelPackage, signer: tuple) -> None:
    (pkg.path / "model.onnx").write_bytes(MODEL_BYTES[:-10])
    with pytest.raises(
        SizeMismatch, match=re.escape(f"'model.onnx': manifest says {len(MODEL_BYTES)} bytes, found 2038")
    ):
        verify_package(pkg, signer[1])


@pytest.mark.parametrize("change", [{"max_batch_size": 1}, {"version": "4"}, {"description": "evil"}])
def test_changed_manifest_field_breaks_the_signature(pkg: ModelPackage, signer: tuple, change: dict) -> None:
    tampered = rewrite_manifest(pkg, **change)
    with pytest.raises(SignatureInvalid, match=f"key '{pkg.signature.key_id}' does not match manifest 'detector'"):
        verify_package(tampered, signer[1])


def test_rehashed_model_with_updated_manifest_still_fails_the_signature(pkg: ModelPackage, signer: tuple) -> None:
    # An attacker who swaps the model and fixes the manifest's hash cannot re-sign it.
    evil = b"evil" * 100
    (pkg.path / "model.onnx").write_bytes(evil)
    files = [f.model_dump() for f in pkg.manifest.files if f.path != "model.onnx"]
    files.append({"path": "model.onnx", "sha256": hashlib.sha256(evil).hexdigest(), "size": len(evil)})
    with pytest.raises(SignatureInvalid):
        verify_package(rewrite_manifest(pkg, files=files), signer[1])


def test_untrusted_key_is_unknown(pkg: ModelPackage) -> None:
    _, other = generate_keypair()
    with pytest.raises(UnknownKey, match=f"untrusted key '{pkg.signature.key_id}'.*{key_id(other)}"):
        verify_package(pkg, {key_id(other): other})


def test_trusted_key_id_with_a_forged_signature_is_invalid(pkg: ModelPackage, signer: tuple) -> None:
    forger, _ = generate_keypair()
    forged = sign_manifest(pkg.manifest, forger).model_copy(update={"key_id": pkg.signature.key_id})
    (pkg.path / SIGNATURE_FILE).write_text(forged.model_dump_json())
    with pytest.raises(SignatureInvalid, match=pkg.signature.key_id):
        verify_package(open_package(pkg.path), signer[1])


def test_malformed_signature_file_is_invalid(pkg: ModelPackage) -> None:
    (pkg.path / SIGNATURE_FILE).write_text('{"v": 1, "algorithm": "ed25519", "key_id": "00", "signature": ""}')
    with pytest.raises(SignatureInvalid, match=re.escape("manifest.sig.json is malformed: key_id")):
        open_package(pkg.path)


def test_missing_file(pkg: ModelPackage, signer: tuple) -> None:
    (pkg.path / "labels.txt").unlink()
    with pytest.raises(MissingFile, match=re.escape("'labels.txt' named in the manifest is missing")):
        verify_package(pkg, signer[1])


def test_extra_files_are_unexpected(pkg: ModelPackage, signer: tuple) -> None:
    (pkg.path / "sub").mkdir()
    (pkg.path / "sub" / "payload.so").write_bytes(b"\x7fELF")
    (pkg.path / "extra.bin").write_bytes(b"x")
    with pytest.raises(UnexpectedFile, match=re.escape("'extra.bin', 'sub/payload.so'")):
        verify_package(pkg, signer[1])


def test_symlink_in_a_package_directory_is_unsafe(pkg: ModelPackage, signer: tuple) -> None:
    (pkg.path / "labels.txt").unlink()
    (pkg.path / "labels.txt").symlink_to("/etc/hostname")
    with pytest.raises(UnsafePath, match=re.escape("'labels.txt' is a symlink")):
        verify_package(pkg, signer[1])


def test_manifest_errors_carry_the_pydantic_reason(pkg: ModelPackage) -> None:
    with pytest.raises(ManifestInvalid, match="max_batch_size: Input should be greater than or equal to 0"):
        rewrite_manifest(pkg, max_batch_size=-1)
    (pkg.path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ManifestInvalid, match="Invalid JSON"):
        open_package(pkg.path)
    (pkg.path / MANIFEST_FILE).unlink()
    with pytest.raises(ManifestInvalid, match=re.escape("manifest.json is missing")):
        open_package(pkg.path)


def test_manifest_with_unsafe_file_path_is_invalid(pkg: ModelPackage) -> None:
    files = [{"path": "../model.onnx", "sha256": "a" * 64, "size": 1}]
    with pytest.raises(ManifestInvalid, match="unsafe or reserved package file path"):
        rewrite_manifest(pkg, files=files, model_file="../model.onnx")


# --- malicious archives --------------------------------------------------------------------------


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("name", "kind", "linkname", "message"),
    [
        ("../x", tarfile.REGTYPE, "", r"'\.\./x' escapes the package directory"),
        ("a/../../x", tarfile.REGTYPE, "", r"'a/\.\./\.\./x' escapes"),
        ("/etc/x", tarfile.REGTYPE, "", "'/etc/x' has an absolute"),
        ("link", tarfile.SYMTYPE, "/etc/passwd", "'link' is a symlink to '/etc/passwd'"),
        ("hard", tarfile.LNKTYPE, "model.onnx", "'hard' is a hardlink to 'model.onnx'"),
        ("dev", tarfile.CHRTYPE, "", "'dev' is a device or fifo"),
        ("fifo", tarfile.FIFOTYPE, "", "'fifo' is a device or fifo"),
    ],
)
def test_malicious_tar_members_are_unsafe(tmp_path: Path, name: str, kind: bytes, linkname: str, message: str) -> None:
    data = b"payload" if kind == tarfile.REGTYPE else None
    archive = write_tar(tmp_path / "evil.tar", [(member("model.onnx"), b"ok"), (member(name, kind, linkname), data)])
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(UnsafePath, match=message):
        open_package(archive, extract_to=dest)
    assert list(dest.iterdir()) == []  # every member is checked before anything is written
    assert not (tmp_path / "deep" / "x").exists()
    assert not (tmp_path / "x").exists()


def test_duplicate_tar_member_is_unsafe(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "dup.tar", [(member("model.onnx"), b"a"), (member("./model.onnx"), b"b")])
    with pytest.raises(UnsafePath, match=re.escape("'./model.onnx' appears twice")):
        extract_tar(archive, tmp_path / "dest")


def test_tar_over_the_size_cap_is_refused(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "big.tar", [(member("a"), b"x" * 600), (member("b"), b"y" * 600)])
    with pytest.raises(UnsafePath, match="exceed the size limit of 1000 bytes"):
        open_package(archive, extract_to=tmp_path / "dest", max_total_bytes=1000)


def test_extraction_needs_an_empty_destination(pkg: ModelPackage, tmp_path: Path) -> None:
    archive = pack_tar(pkg.path, tmp_path / "pkg.tar")
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "old").write_text("x")
    with pytest.raises(PackageError, match="is not empty"):
        open_package(archive, extract_to=tmp_path / "dest")


def test_not_a_package(tmp_path: Path) -> None:
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all")
    with pytest.raises(PackageError, match="cannot read archive"):
        open_package(tmp_path / "junk.tar", extract_to=tmp_path / "dest")
    with pytest.raises(PackageError, match="does not exist"):
        open_package(tmp_path / "nothing")


# --- ONNX I/O ------------------------------------------------------------------------------------


def test_tensor_specs_from_onnx(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT64)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 3, None])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", 3, None])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    inputs, outputs = tensor_specs_from_onnx(tmp_path / "m.onnx")
    assert inputs == (TensorSpec(name="x", datatype="FP16", shape=(-1, 3, -1)),)
    assert outputs == (TensorSpec(name="y", datatype="INT64", shape=(-1, 3, -1)),)
    (tmp_path / "bad.onnx").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(ManifestInvalid, match="cannot read ONNX model"):
        tensor_specs_from_onnx(tmp_path / "bad.onnx")


def test_failed_open_removes_its_own_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    archive = write_tar(tmp_path / "evil.tar", [(member("model.onnx"), b"ok"), (member("../x"), b"x")])
    monkeypatch.setattr(tempfile, "tempdir", None)  # make tempfile read TMPDIR again
    with pytest.raises(UnsafePath):
        open_package(archive)
    assert list((tmp_path / "tmp").iterdir()) == []
