"""`edge-agent provision`: join the fleet with a claim token, pinning the hub's CA by fingerprint.

Trust bootstrap (as `kubeadm join` does): the operator's join line carries the sha256 of the hub CA's
DER. The agent opens TLS to the hub without trusting anything, only to collect candidate CA
certificates - the chain the hub presents, then `GET /api/v1/ca` - and keeps the one whose fingerprint
matches; a mismatch stops here with a clear error. Everything after runs over a context that trusts
only that CA and checks the hub's host name.

The device makes a fresh EC P-256 key on every run (re-provisioning rotates the key; the private key
never leaves the device), sends a CSR with its hardware facts, checks the certificate it gets back (our
key, issued by the pinned CA), and replaces the identity directory atomically: new files go into a temp
directory, are fsynced, the old directory is renamed to `<dir>.prev` and the new one into place.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import shutil
import socket
import ssl
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from edge_agent.fleet.errors import FleetError, IdentityError, ProvisionError
from edge_agent.fleet.identity import (
    CA_FILE,
    CERT_FILE,
    INFO_FILE,
    KEY_FILE,
    PREV_SUFFIX,
    SIGNING_DIR,
    DeviceIdentity,
)
from models.atomic import fsync_dir
from protocols.messages import HardwareSummary, ProvisionRequest, ProvisionResponse

log = logging.getLogger(__name__)

DEFAULT_IDENTITY_DIR = Path("/var/lib/edgefleet/identity")
PROVISION_PATH = "/api/v1/provision"
CA_PATH = "/api/v1/ca"


def normalise_fingerprint(value: str) -> str:
    """Lower-case hex without `sha256:` prefix or colons; ProvisionError unless 64 hex digits."""
    fp = value.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
        raise ProvisionError(
            f"--ca-fingerprint must be the sha256 of the CA certificate (64 hex digits), got {value!r}"
        )
    return fp


def cert_fingerprint(cert: x509.Certificate) -> str:
    """sha256 of the certificate's DER, lower-case hex."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _hub_address(hub_url: str) -> tuple[str, int]:
    parts = urlsplit(hub_url)
    if parts.scheme != "https" or not parts.hostname:
        raise ProvisionError(f"--hub must be an https:// URL, got {hub_url!r}")
    return parts.hostname, parts.port or 443


def _unverified_context() -> ssl.SSLContext:
    # Only used to read what the hub presents; nothing read through it is trusted until it matches the pin.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _presented_chain(host: str, port: int, timeout_s: float) -> list[x509.Certificate]:
    with (
        socket.create_connection((host, port), timeout=timeout_s) as raw,
        _unverified_context().wrap_socket(raw, server_hostname=host) as tls,
    ):
        # Public in Python 3.13; the same method exists (private) on 3.10-3.12's _ssl socket object.
        sslobj: Any = getattr(tls, "_sslobj", None)
        getter = getattr(tls, "get_unverified_chain", None) or getattr(sslobj, "get_unverified_chain", None)
        if getter is None:
            der = tls.getpeercert(binary_form=True)
            return [x509.load_der_x509_certificate(der)] if der else []
        return [x509.load_pem_x509_certificate(c.public_bytes().encode()) for c in getter() or ()]


def _served_ca(host: str, port: int, timeout_s: float) -> list[x509.Certificate]:
    conn = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=_unverified_context())
    try:
        conn.request("GET", CA_PATH)
        resp = conn.getresponse()
        body = resp.read(1 << 20)
    finally:
        conn.close()
    if resp.status != 200:
        return []
    try:
        return x509.load_pem_x509_certificates(body)
    except ValueError:
        return []


def fetch_pinned_ca(hub_url: str, fingerprint: str, *, timeout_s: float = 10.0) -> x509.Certificate:
    """The hub's CA certificate whose sha256 equals `fingerprint`; ProvisionError if the hub has none."""
    host, port = _hub_address(hub_url)
    fp = normalise_fingerprint(fingerprint)
    seen: list[str] = []
    try:
        for source in (_presented_chain, _served_ca):
            for cert in source(host, port, timeout_s):
                if cert_fingerprint(cert) == fp:
                    return cert
                seen.append(cert_fingerprint(cert))
    except (OSError, http.client.HTTPException) as exc:
        raise ProvisionError(f"cannot reach the hub at {host}:{port}: {exc}") from exc
    raise ProvisionError(
        f"the hub at {host}:{port} does not present a CA with fingerprint {fp} (it presented "
        f"{', '.join(seen) or 'none'}): wrong hub, wrong fingerprint, or someone in between - refusing"
    )


def make_key_and_csr(device_id: str | None) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A new EC P-256 key and a PEM CSR for it (the hub sets the CN it issues)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id or "edgefleet-device")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def post_provision(
    hub_url: str,
    ca: x509.Certificate,
    request: ProvisionRequest,
    *,
    timeout_s: float = 30.0,
    client_cert: tuple[Path, Path] | None = None,
) -> ProvisionResponse:
    """POST the request over TLS trusting only `ca`; ProvisionError with the hub's reason on refusal.

    `client_cert` (the current identity's certificate and key) proves the current key when an existing
    device id is re-provisioned: the hub wants it, or an operator approval."""
    host, port = _hub_address(hub_url)
    ctx = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    conn = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=ctx)
    try:
        conn.request(
            "POST",
            PROVISION_PATH,
            body=request.model_dump_json().encode(),
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        body = resp.read(1 << 20)
    except ssl.SSLCertVerificationError as exc:
        raise ProvisionError(f"the hub's certificate does not match the pinned CA or host {host}: {exc}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise ProvisionError(f"provisioning request to {host}:{port} failed: {exc}") from exc
    finally:
        conn.close()
    if resp.status != 200:
        try:
            reason = str(json.loads(body)["error"])
        except (ValueError, KeyError, TypeError):
            reason = body[:200].decode(errors="replace")
        what = "refused the claim" if resp.status in (401, 403) else f"answered {resp.status}"
        raise ProvisionError(f"the hub {what}: {reason}")
    try:
        return ProvisionResponse.model_validate_json(body)
    except ValidationError as exc:
        raise ProvisionError(f"the hub's answer is not a ProvisionResponse: {exc}") from exc


def check_response(response: ProvisionResponse, key: ec.EllipticCurvePrivateKey, ca: x509.Certificate) -> None:
    """The certificate is for our key, names the device id, and was issued by the pinned CA."""
    try:
        cert = x509.load_pem_x509_certificate(response.certificate_pem.encode())
        chain = x509.load_pem_x509_certificates(response.ca_chain_pem.encode())
    except ValueError as exc:
        raise ProvisionError(f"the hub sent an unreadable certificate: {exc}") from exc
    if cert.public_key() != key.public_key():
        raise ProvisionError("the certificate the hub issued is not for this device's key")
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [response.device_id]:
        raise ProvisionError(f"certificate CN {cns} does not match device id {response.device_id!r}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        raise ProvisionError("the device certificate was not issued by the pinned hub CA") from exc
    except Exception as exc:  # cryptography's InvalidSignature
        raise ProvisionError("the device certificate was not issued by the pinned hub CA") from exc
    if cert_fingerprint(ca) not in {cert_fingerprint(c) for c in chain}:
        raise ProvisionError("the CA chain the hub sent does not contain the pinned CA")


def write_identity(directory: Path, key: ec.EllipticCurvePrivateKey, response: ProvisionResponse) -> DeviceIdentity:
    """Write the identity into a temp dir, fsync, keep the old one as `<dir>.prev`, rename into place."""
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{directory.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a run that crashed before its rename
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=parent))  # 0700
    info = response.model_dump(mode="json", exclude={"certificate_pem", "ca_chain_pem"})
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files: dict[str, tuple[bytes, int]] = {
        KEY_FILE: (key_pem, 0o600),
        CERT_FILE: (response.certificate_pem.encode(), 0o644),
        CA_FILE: (response.ca_chain_pem.encode(), 0o644),
        INFO_FILE: (json.dumps(info, indent=2, sort_keys=True).encode() + b"\n", 0o644),
    }
    (tmp / SIGNING_DIR).mkdir(mode=0o755)
    for signing_key in response.signing_keys:
        files[f"{SIGNING_DIR}/{signing_key.key_id}.pem"] = (signing_key.public_key_pem.encode(), 0o644)
    for name, (data, mode) in files.items():
        fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(tmp / SIGNING_DIR)
    fsync_dir(tmp)
    prev = directory.with_name(directory.name + PREV_SUFFIX)
    if directory.exists():
        shutil.rmtree(prev, ignore_errors=True)
        os.rename(directory, prev)
    os.rename(tmp, directory)
    fsync_dir(parent)
    return DeviceIdentity.load(directory)


def _probe_hardware() -> HardwareSummary:
    from edge_agent import probe
    from edge_agent.fleet.device_load import hardware_summary

    return hardware_summary(probe.probe_hardware())


def _current_cert(identity_dir: Path) -> tuple[Path, Path] | None:
    """The identity already in `identity_dir` (re-provisioning: its certificate proves its key), if any."""
    try:
        current = DeviceIdentity.load(identity_dir)
    except IdentityError:  # no (readable) identity yet: a first provisioning
        return None
    return current.certfile, current.keyfile


def provision(
    hub_url: str,
    claim: str,
    ca_fingerprint: str,
    identity_dir: Path,
    *,
    device_id: str | None = None,
    hardware: Callable[[], HardwareSummary] = _probe_hardware,
    timeout_s: float = 30.0,
) -> DeviceIdentity:
    """Pin the CA, make a key and CSR, ask the hub, check the answer and write the identity directory."""
    ca = fetch_pinned_ca(hub_url, ca_fingerprint, timeout_s=timeout_s)
    key, csr_pem = make_key_and_csr(device_id)
    try:
        request = ProvisionRequest(claim_token=claim, csr_pem=csr_pem, hardware=hardware(), device_id=device_id)
    except ValidationError as exc:
        raise ProvisionError(f"invalid provisioning request: {exc}") from exc
    response = post_provision(hub_url, ca, request, timeout_s=timeout_s, client_cert=_current_cert(identity_dir))
    check_response(response, key, ca)
    identity = write_identity(identity_dir, key, response)
    log.info("provisioned as %s; identity in %s", identity.device_id, identity.directory)
    return identity


# --- CLI ----------------------------------------------------------------------------------------------


def add_provision_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add `provision` to an argparse subparsers object; the parsed args carry `func`."""
    parser = subparsers.add_parser(
        "provision", help="join the fleet: get a device certificate from the hub with a claim token"
    )
    _add_arguments(parser)
    parser.set_defaults(func=_run)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hub", required=True, help="hub base URL, https://HOST:PORT")
    parser.add_argument("--claim", required=True, help="claim token from `cloud-hub claims create`")
    parser.add_argument("--ca-fingerprint", required=True, help="sha256 (hex) of the hub CA certificate's DER")
    parser.add_argument("--identity-dir", type=Path, default=DEFAULT_IDENTITY_DIR, help="where to write the identity")
    parser.add_argument("--device-id", default=None, help="device id to ask for (the hub may assign another)")
    parser.add_argument("--timeout", type=float, default=30.0, help="network timeout, seconds")


def _run(args: argparse.Namespace) -> int:
    try:
        identity = provision(
            args.hub,
            args.claim,
            args.ca_fingerprint,
            args.identity_dir,
            device_id=args.device_id,
            timeout_s=args.timeout,
        )
    except FleetError as exc:
        print(f"edge-agent provision: {exc}", file=sys.stderr)
        return 1
    print(f"provisioned as {identity.device_id}; broker {identity.broker_url}; identity in {identity.directory}")
    return 0


def provision_main(argv: list[str]) -> int:
    """`edge-agent provision ...` as a function: 0 on success, 1 on failure, 2 on bad usage."""
    parser = argparse.ArgumentParser(prog="edge-agent provision", description="join the edgefleet fleet")
    _add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return _run(args)
