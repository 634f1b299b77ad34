"""Flags every command that reaches an edge shares: zeroconf interfaces, token, TLS pin; and
the checks on them that make a mistake a usage error (exit 2) instead of a silent surprise."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ondevice.common import argtypes


def add_edge_access(p: argparse.ArgumentParser) -> None:
    """--interface, --site, --token-file, --edge-fingerprint, --allow-plaintext-token, --browse."""
    p.add_argument(
        "--interface",
        action="append",
        default=[],
        metavar="IP",
        help="browse zeroconf on the interface with this IPv4 address (repeatable; default all)",
    )
    add_site(p)
    p.add_argument("--token-file", type=Path,
                   help="bearer token for the edge (default: $COINFER_TOKEN)")
    p.add_argument("--edge-fingerprint", metavar="SHA256", type=argtypes.fingerprint,
                   help="pin the edge's TLS certificate: the SHA-256 of its DER form, 64 hex "
                   "digits, colons allowed (edge-server prints it); needs an https:// --edge")
    p.add_argument("--allow-plaintext-token", action="store_true",
                   help="send the bearer token to an http:// edge on another host (in the "
                   "clear); by default that is refused")
    p.add_argument("--browse", type=argtypes.positive_float, default=2.0, metavar="S",
                   help="seconds to listen for edges (default 2)")


def add_site(p: argparse.ArgumentParser) -> None:
    """--site: the zeroconf site label a device keeps to."""
    p.add_argument("--site", type=argtypes.site, metavar="LABEL",
                   help="use only edges advertising this site label (edge-server --site); "
                   "default: any edge")


def read_token(token_file: Path | None) -> str | None:
    """The bearer token: the file's stripped text, else $COINFER_TOKEN, else None.
    Raises ValueError, naming the flag, for a file that is missing, unreadable or empty."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"--token-file {token_file}: {exc.strerror or exc}") from None
        if not token:
            raise ValueError(f"--token-file {token_file} is empty")
        return token
    return os.environ.get("COINFER_TOKEN") or None


def host_ipv4_addresses() -> list[str]:
    """The IPv4 addresses of this host's interfaces (in this network namespace)."""
    import ifaddr

    return sorted({str(ip.ip) for adapter in ifaddr.get_adapters() for ip in adapter.ips
                   if isinstance(ip.ip, str)})


def interface_error(interfaces: list[str]) -> str | None:
    """Why ``--interface`` values cannot be browsed on, or None."""
    if not interfaces:
        return None
    import ipaddress

    have = host_ipv4_addresses()

    def on_host(ip: str) -> bool:  # lo owns all of 127.0.0.0/8
        try:
            return ip in have or ipaddress.IPv4Address(ip).is_loopback
        except ValueError:
            return False

    missing = [ip for ip in interfaces if not on_host(ip)]
    if missing:
        return (f"--interface {missing[0]} is not an IPv4 address of this host "
                f"(it has {', '.join(have) or 'none'})")
    return None


def edge_access_error(args: argparse.Namespace, token: str | None) -> str | None:
    """Why the edge flags cannot be used as given, or None: an --interface this host lacks, a
    TLS pin on an http:// --edge, a token that would travel in plaintext to another host.
    ``args.edge`` is a tuple of URLs (``argtypes.edge_urls``) or None; a pin with several
    is refused by ``EdgePlan`` itself."""
    from ondevice.edge.client import transport_problem

    problem = interface_error(args.interface)
    for url in getattr(args, "edge", None) or ():
        problem = problem or transport_problem(
            url, token=token, fingerprint=args.edge_fingerprint,
            allow_plaintext_token=args.allow_plaintext_token)
    return problem
