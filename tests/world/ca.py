"""A throwaway certificate authority for the loopback servers (trustme).

Why: refreshd verifies TLS against the system store plus `network.ca_file`; the test servers
present certificates for the test domains issued by this CA, so tests exercise real
verification without touching the system store. Files live in the CA's own directory.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class ServerCert:
    """PEM files of one server certificate: chain (leaf first) and private key."""

    cert_chain: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        """An ssl context for a Python test server presenting this certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_chain, self.key)
        return context


class LocalCA:
    """The CA; `ca_file` is what refreshd's `network.ca_file` and httpx's `verify=` take."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._ca = trustme.CA(organization_name="refreshd test world")
        self.ca_file = directory / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))
        self._issued = 0

    def issue(self, names: Iterable[str]) -> ServerCert:
        """A server certificate valid for every name in `names` (DNS names or IP addresses)."""
        self._issued += 1
        leaf = self._ca.issue_cert(*names)
        cert_chain = self.directory / f"server{self._issued}.pem"
        key = self.directory / f"server{self._issued}.key"
        with open(cert_chain, "wb") as out:
            for blob in leaf.cert_chain_pems:
                out.write(blob.bytes())
        leaf.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        return ServerCert(cert_chain=cert_chain, key=key)

    def client_context(self) -> ssl.SSLContext:
        """An ssl context trusting only this CA (for clients in tests)."""
        return ssl.create_default_context(cafile=str(self.ca_file))
