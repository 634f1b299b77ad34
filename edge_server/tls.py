"""TLS helpers: the certificate fingerprint an edge advertises and a device pins."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


def certificate_fingerprint(cert_path: Path) -> str:
    """SHA-256 of the first certificate in a PEM file, in DER form, as lowercase hex.

    This is what ``aiohttp.Fingerprint`` compares against on the device side.
    """
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
