"""Flags every command that reaches an edge shares: zeroconf interfaces, token, TLS pin."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_edge_access(p: argparse.ArgumentParser) -> None:
    """--interface, --token-file, --edge-fingerprint, --browse."""
    p.add_argument(
        "--interface",
        action="append",
        default=[],
        metavar="IP",
        help="browse zeroconf on the interface with this IPv4 address (repeatable; default all)",
    )
    p.add_argument("--token-file", type=Path,
                   help="bearer token for the edge (default: $COINFER_TOKEN)")
    p.add_argument("--edge-fingerprint", metavar="SHA256",
                   help="pin the edge's TLS certificate (hex SHA-256 of its DER form)")
    p.add_argument("--browse", type=float, default=2.0, metavar="S",
                   help="seconds to listen for edges (default 2)")


def read_token(token_file: Path | None) -> str | None:
    """The bearer token: the file's stripped text, else $COINFER_TOKEN, else None.
    Raises ValueError for an empty file and OSError for one that cannot be read."""
    if token_file is not None:
        token = token_file.read_text().strip()
        if not token:
            raise ValueError(f"token file {token_file} is empty")
        return token
    return os.environ.get("COINFER_TOKEN") or None
