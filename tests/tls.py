"""Test certificates made on the spot with trustme: a CA, a server certificate for
localhost/127.0.0.1, client certificates; written to PEM files the server's flags take."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Pems:
    cert: Path  # certificate chain
    key: Path
    ca: Path  # the CA that signed it


def write_leaf(ca: trustme.CA, directory: Path, name: str, *identities: str) -> Pems:
    """A certificate from `ca` for `identities` (default: localhost and 127.0.0.1) as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(*(identities or ("localhost", "127.0.0.1")))
    cert, key, ca_file = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}-ca.crt"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_file))
    return Pems(cert, key, ca_file)
