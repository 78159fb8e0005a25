"""This host's own addresses, for recognising requests addressed to the server and for writing
an address in Via/Record-Route/Path when a listener is bound to a wildcard."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..outbound.flow import Flow, Transport
from ..proxy.routing import LocalIdentity
from ..sip.uri import SipURI

if TYPE_CHECKING:
    from .listeners import BoundListener

_default_cache: dict[bool, str] = {}


def local_addresses(v6: bool) -> list[str]:
    """Loopback, the host name's addresses and the default-route address of one family."""
    hosts = ["::1"] if v6 else ["127.0.0.1"]
    try:
        name = socket.gethostname()
        for info in socket.getaddrinfo(name, None, socket.AF_INET6 if v6 else socket.AF_INET):
            hosts.append(str(info[4][0]))
    except OSError:
        pass
    d = default_host(v6)
    if d:
        hosts.append(d)
    return hosts


def default_host(v6: bool) -> str:
    """The address this host would use to reach the outside (no packet is sent)."""
    if v6 in _default_cache:
        return _default_cache[v6]
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    target = ("2001:db8::1", 9) if v6 else ("192.0.2.1", 9)
    host = "::1" if v6 else "127.0.0.1"
    try:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.connect(target)
            host = s.getsockname()[0]
    except OSError:
        pass
    _default_cache[v6] = host
    return host


class LocalAddresses:
    """Where this server is: learned from the bound listeners (``learn``), and our own URI on the
    listener of each flow (Via, Record-Route, Path). Accepted connections know their real local
    address; a wildcard UDP socket does not, so the advertised (or detected) address stands in."""

    def __init__(self, identity: LocalIdentity, advertise: str) -> None:
        self.identity = identity
        self.advertise = advertise
        # the UDP listener of each address family: the socket requests to a UDP address leave by
        self.udp_local: dict[int, tuple[str, int]] = {}
        self._uris: dict[tuple[Transport, tuple[str, int]], SipURI] = {}

    def learn(self, listeners: Iterable[BoundListener]) -> None:
        """The listeners are bound and nothing was read yet: our hosts and ports."""
        ident = self.identity
        if self.advertise:
            ident.add_host(self.advertise)
        for bl in listeners:
            ident.ports.add(bl.port)
            wildcard = bl.host in ("0.0.0.0", "::")
            for host in local_addresses(bl.host == "::") if wildcard else [bl.host]:
                ident.add_host(host)
            if bl.transport == "udp":
                self.udp_local[socket.AF_INET6 if ":" in bl.host else socket.AF_INET] = (bl.host, bl.port)

    def uri(self, flow: Flow) -> SipURI:
        key = (flow.transport, flow.local)
        uri = self._uris.get(key)
        if uri is None:
            host = flow.local[0]
            if host in ("0.0.0.0", "::", ""):
                host = self.advertise or default_host(host == "::")
            params: list[tuple[str, str | None]] = []
            if flow.transport is not Transport.UDP:
                params.append(("transport", flow.transport.uri_param))
            uri = self._uris[key] = SipURI("sip", None, None, host, flow.local[1], params, None)
        return uri

    def via(self, flow: Flow, branch: str) -> str:
        return f"SIP/2.0/{flow.transport.value} {self.uri(flow).hostport};branch={branch}"
