"""Secrets the hub hands out (claim and API tokens): random, shown once, stored as sha256."""

from __future__ import annotations

import hashlib
import secrets

CLAIM_PREFIX = "efc_"
OPERATOR_PREFIX = "efo_"


def new_token(prefix: str) -> str:
    """A fresh 256-bit URL-safe token with a recognisable prefix."""
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """sha256 hex of a token: what the store keeps."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_id(prefix: str, nbytes: int = 6) -> str:
    """A short random id like `clm-3f9a1c0b2d4e`."""
    return f"{prefix}-{secrets.token_hex(nbytes)}"
