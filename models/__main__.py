"""`python -m models`: make keys, build, sign, verify and inspect model packages."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from models.errors import ModelsError, PackageError
from models.package import (
    build_package,
    open_package,
    package_sha256,
    sign_package,
    tensor_specs_from_onnx,
    verify_package,
)
from models.signing import (
    generate_keypair,
    key_id,
    load_private_key,
    load_trusted_keys,
    save_private_key,
    save_public_key,
)
from protocols.manifest import TensorSpec

PRIVATE_KEY_FILE = "signing.key"
PUBLIC_KEY_FILE = "signing.pub"


def _tensor_arg(value: str) -> TensorSpec:
    """Parse NAME:DATATYPE:DIM,DIM,... (e.g. input:FP32:-1,3,64,64) into a TensorSpec."""
    try:
        name, datatype, dims = value.split(":")
        shape = tuple(int(d) for d in dims.split(",")) if dims else ()
        return TensorSpec.model_validate({"name": name, "datatype": datatype, "shape": shape})
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        raise argparse.ArgumentTypeError(
            f"expected NAME:DATATYPE:DIMS such as input:FP32:-1,3,64,64, got {value!r}"
        ) from exc


def _cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    private_path, public_path = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    if not args.force and (private_path.exists() or public_path.exists()):
        raise PackageError(f"{str(out)!r} already holds a key pair; pass --force to replace it")
    private, public = generate_keypair()
    save_private_key(private, private_path)
    save_public_key(public, public_path)
    print(f"key id {key_id(public)}: private {private_path} (0600), public {public_path}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    if args.inputs_from_onnx:
        if args.format != "onnx":
            raise PackageError("--inputs-from-onnx needs --format onnx")
        inputs, outputs = tensor_specs_from_onnx(args.model)
    elif args.input and args.output:
        inputs, outputs = tuple(args.input), tuple(args.output)
    else:
        raise PackageError("give --inputs-from-onnx, or at least one --input and one --output")
    private_key = load_private_key(args.key) if args.key else None
    pkg = build_package(
        [args.model, *args.file],
        args.out,
        name=args.name,
        version=args.version,
        format=args.format,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=args.max_batch_size,
        precision=args.precision or ("fp32",),
        description=args.description,
        private_key=private_key,
    )
    signed = f"signed by {pkg.signature.key_id}" if pkg.signature else "unsigned"
    print(f"built {pkg.manifest.name} version {pkg.manifest.version} in {pkg.path} ({signed}), sha256 {pkg.sha256}")
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    pkg = sign_package(args.path, load_private_key(args.key))
    assert pkg.signature is not None
    print(f"signed {pkg.manifest.name} version {pkg.manifest.version} with key {pkg.signature.key_id}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    trusted = load_trusted_keys(args.pub)
    with tempfile.TemporaryDirectory(prefix="edgefleet-verify-") as scratch:
        pkg = open_package(args.path, extract_to=Path(scratch) / "pkg")
        verify_package(pkg, trusted, require_signature=not args.allow_unsigned)
        signer = pkg.signature.key_id if pkg.signature else "unsigned"
        print(f"OK {pkg.manifest.name} version {pkg.manifest.version} key {signer} sha256 {pkg.sha256}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="edgefleet-inspect-") as scratch:
        pkg = open_package(args.path, extract_to=Path(scratch) / "pkg")
        report = {
            "package_sha256": package_sha256(pkg),
            "signature_key_id": pkg.signature.key_id if pkg.signature else None,
            "manifest": pkg.manifest.model_dump(mode="json"),
        }
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m models`."""
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("keygen", help="make an ed25519 signing key pair (signing.key 0600, signing.pub)")
    p.add_argument("--out", required=True, help="directory for signing.key and signing.pub")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("build", help="build a package directory from a model file")
    p.add_argument("--model", required=True, help="the model file (first file of the package)")
    p.add_argument("--file", action="append", default=[], help="another file to ship (repeatable)")
    p.add_argument("--name", required=True, help="model name")
    p.add_argument("--version", required=True, help="model version, e.g. 1")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "torch_exported_program"])
    p.add_argument("--max-batch-size", type=int, required=True, help="largest batch; 0 = no batch axis")
    p.add_argument("--precision", action="append", choices=["fp32", "fp16", "int8"], help="best first")
    p.add_argument("--description", default="", help="free text for operators")
    p.add_argument("--inputs-from-onnx", action="store_true", help="take inputs/outputs from the ONNX graph")
    p.add_argument("--input", action="append", type=_tensor_arg, help="NAME:DATATYPE:DIMS (repeatable)")
    p.add_argument("--output", action="append", type=_tensor_arg, help="NAME:DATATYPE:DIMS (repeatable)")
    p.add_argument("--out", required=True, help="package directory to create (absent or empty)")
    p.add_argument("--key", help="private key to sign with (unsigned without it)")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("sign", help="(re)sign a package directory")
    p.add_argument("path", help="package directory")
    p.add_argument("--key", required=True, help="private key file")
    p.set_defaults(func=_cmd_sign)

    p = sub.add_parser("verify", help="verify files, hashes and signature of a package directory or tar")
    p.add_argument("path", help="package directory or tar")
    p.add_argument("--pub", nargs="+", required=True, help="trusted public key file(s)")
    p.add_argument("--allow-unsigned", action="store_true", help="accept a package without signature")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("inspect", help="print a package's manifest, content hash and signer (no checks)")
    p.add_argument("path", help="package directory or tar")
    p.set_defaults(func=_cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; 0 on success, 1 on an expected failure (printed as `ErrorClass: message`), 2 on usage."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ModelsError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
