"""The hub's PKI: its CA, the certificates it issues, CSR checks and the CRL."""

from cloud_hub.pki.ca import HubCA, ca_fingerprint
from cloud_hub.pki.csr import load_csr
from cloud_hub.pki.identity import HubIdentity

__all__ = ["HubCA", "HubIdentity", "ca_fingerprint", "load_csr"]
