"""`python -m models`: keygen, build, sign, verify, inspect, with exit codes and one-line errors."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from models.__main__ import main
from models.package import pack_tar
from models.zoo import zoo_package_path

ZOO_ONNX = zoo_package_path("tiny-cnn", 1) / "model.onnx"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    return tmp_path / "keys"


def build(tmp_path: Path, keys: Path | None, *extra: str) -> Path:
    out = tmp_path / "pkg"
    argv = ["build", "--model", str(ZOO_ONNX), "--name", "cnn", "--version", "7", "--max-batch-size", "8"]
    argv += ["--out", str(out), "--inputs-from-onnx", *extra]
    if keys is not None:
        argv += ["--key", str(keys / "signing.key")]
    assert main(argv) == 0
    return out


def test_keygen_writes_a_private_key_0600(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "k"
    assert main(["keygen", "--out", str(keys)]) == 0
    assert stat.S_IMODE((keys / "signing.key").stat().st_mode) == 0o600
    assert (keys / "signing.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert "key id " in capsys.readouterr().out


def test_keygen_refuses_to_overwrite(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (keys / "signing.key").read_bytes()
    assert main(["keygen", "--out", str(keys)]) == 1
    assert "PackageError: " in capsys.readouterr().err
    assert (keys / "signing.key").read_bytes() == before
    assert main(["keygen", "--out", str(keys), "--force"]) == 0
    assert (keys / "signing.key").read_bytes() != before


def test_build_infers_tensors_from_onnx_and_verifies(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = build(tmp_path, keys)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 64, 64]}]
    assert manifest["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 4]}]
    capsys.readouterr()
    assert main(["verify", str(out), "--pub", str(keys / "signing.pub")]) == 0
    assert capsys.readouterr().out.startswith("OK cnn version 7 key ")
    archive = pack_tar(out, tmp_path / "pkg.tar")
    assert main(["verify", str(archive), "--pub", str(keys / "signing.pub")]) == 0


def test_build_with_explicit_tensors(tmp_path: Path) -> None:
    out = build(tmp_path, None, "--input", "input:FP32:-1,3,64,64", "--output", "scores:FP32:-1,4")
    assert not (out / "manifest.sig.json").exists()


def test_build_with_a_bad_tensor_argument_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["build", "--model", str(ZOO_ONNX), "--name", "n", "--version", "1", "--max-batch-size", "8"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "o"), "--input", "input:FP99:-1", "--output", "y:FP32:-1"])
    assert exc.value.code == 2
    assert "expected NAME:DATATYPE:DIMS" in capsys.readouterr().err


def test_build_with_a_static_batch_axis_names_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["build", "--model", str(ZOO_ONNX), "--name", "n", "--version", "1", "--max-batch-size", "8"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--input", "input:FP32:1,3", "--output", "y:FP32:-1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ManifestInvalid: ")
    assert "batch axis must come first" in err


def test_sign_then_verify(tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = build(tmp_path, None)
    pub = str(keys / "signing.pub")
    assert main(["verify", str(out), "--pub", pub]) == 1
    assert capsys.readouterr().err.startswith("SignatureMissing: package 'cnn' version '7'")
    assert main(["verify", str(out), "--pub", pub, "--allow-unsigned"]) == 0
    assert main(["sign", str(out), "--key", str(keys / "signing.key")]) == 0
    assert main(["verify", str(out), "--pub", pub]) == 0


def test_verify_reports_the_error_class_and_message(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = build(tmp_path, keys)
    data = bytearray((out / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (out / "model.onnx").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(out), "--pub", str(keys / "signing.pub")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("HashMismatch: file 'model.onnx': manifest sha256 ")
    assert "Traceback" not in err


def test_verify_with_another_key_is_unknown_key(tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = build(tmp_path, keys)
    assert main(["keygen", "--out", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    assert main(["verify", str(out), "--pub", str(tmp_path / "other" / "signing.pub")]) == 1
    assert capsys.readouterr().err.startswith("UnknownKey: manifest signed by untrusted key")


def test_verify_with_a_missing_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = build(tmp_path, None)
    assert main(["verify", str(out), "--pub", str(tmp_path / "nope.pub")]) == 1
    assert capsys.readouterr().err.startswith("KeyFileError: cannot read key file")


def test_inspect_prints_manifest_and_content_address(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = build(tmp_path, keys)
    archive = pack_tar(out, tmp_path / "pkg.tar")
    capsys.readouterr()
    assert main(["inspect", str(archive)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["manifest"]["name"] == "cnn"
    assert len(report["package_sha256"]) == 64
    assert len(report["signature_key_id"]) == 16


def test_module_entry_point_exit_codes(tmp_path: Path) -> None:
    zoo_pub = zoo_package_path("tiny-cnn", 1).parents[2] / "zoo-signing.pub"
    ok = subprocess.run(
        [sys.executable, "-m", "models", "verify", str(zoo_package_path("tiny-mlp", 1)), "--pub", str(zoo_pub)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK tiny-mlp version 1")
    bad = subprocess.run(
        [sys.executable, "-m", "models", "verify", str(tmp_path / "missing")],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    assert bad.returncode == 2  # --pub is required: argparse usage error
