"""Checks on a device's certificate signing request. The CSR's subject is ignored: the hub sets the CN."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cloud_hub.errors import InvalidRequest
from cloud_hub.pki.ca import LeafKey

MIN_RSA_BITS = 2048
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def load_csr(csr_pem: str) -> LeafKey:
    """Parse a PEM CSR, check its self-signature and key type; return the public key to certify."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidRequest(f"csr_pem is not a PEM certificate signing request: {exc}") from exc
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # cryptography raises various errors for odd algorithms
        raise InvalidRequest(f"CSR signature cannot be checked: {exc}") from exc
    if not valid:
        raise InvalidRequest("CSR signature is invalid: it was not signed by the key it carries")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ALLOWED_CURVES):
            raise InvalidRequest(f"CSR key uses curve {key.curve.name}; use P-256, P-384 or P-521")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidRequest(f"CSR RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are needed")
        return key
    raise InvalidRequest(f"CSR key type {type(key).__name__} is not supported; use EC (P-256) or RSA")
