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
    listener of each flow (Via, Record-Route, Path).

    - A listener with ``;advertise=`` (a server behind a 1:1 NAT) is written as its public
      address on every transport (issue 17).
    - Accepted connections know their real local address; a wildcard UDP socket does not, so
      ``server.advertise`` (or the detected default address) stands in for it.
    - A connection the server opened itself has an ephemeral local port nobody can reach: it is
      written as the listening address of its transport (issue 20: a BYE to the Record-Route
      must reach a listener).
    """

    def __init__(self, identity: LocalIdentity, advertise: str) -> None:
        self.identity = identity
        self.advertise = advertise
        # the UDP listener of each address family: the socket requests to a UDP address leave by
        self.udp_local: dict[int, tuple[str, int]] = {}
        self._listeners: dict[tuple[Transport, int], BoundListener] = {}
        self._first: dict[Transport, BoundListener] = {}
        self._uris: dict[tuple[Transport, tuple[str, int]], SipURI] = {}

    def learn(self, listeners: Iterable[BoundListener]) -> None:
        """The listeners are bound and nothing was read yet: our hosts and ports."""
        ident = self.identity
        if self.advertise:
            ident.add_host(self.advertise)
        for bl in listeners:
            transport = bl.flow_transport
            self._listeners[(transport, bl.port)] = bl
            self._first.setdefault(transport, bl)
            ident.ports.add(bl.port)
            wildcard = bl.host in ("0.0.0.0", "::")
            for host in local_addresses(bl.host == "::") if wildcard else [bl.host]:
                ident.add_host(host)
            if bl.advertise_host:
                ident.add_host(bl.advertise_host)
                ident.ports.add(bl.advertise_port or bl.port)
            if bl.transport == "udp":
                self.udp_local[socket.AF_INET6 if ":" in bl.host else socket.AF_INET] = (bl.host, bl.port)

    def uri(self, flow: Flow) -> SipURI:
        key = (flow.transport, flow.local)
        uri = self._uris.get(key)
        if uri is None:
            uri = self._uris[key] = self._make_uri(flow)
        return uri

    def _make_uri(self, flow: Flow) -> SipURI:
        host, port = flow.local
        bl = self._listeners.get((flow.transport, port))
        if bl is None and flow.transport is not Transport.UDP:
            bl = self._first.get(flow.transport)  # a connection we opened: name our listener
            if bl is not None:
                host, port = bl.host, bl.port
        if bl is not None and bl.advertise_host:
            host, port = bl.advertise_host, bl.advertise_port or bl.port
        elif host in ("0.0.0.0", "::", ""):
            host = self.advertise or default_host(host == "::")
        params: list[tuple[str, str | None]] = []
        if flow.transport is not Transport.UDP:
            params.append(("transport", flow.transport.uri_param))
        return SipURI("sip", None, None, host, port, params, None)

    def via(self, flow: Flow, branch: str) -> str:
        return f"SIP/2.0/{flow.transport.value} {self.uri(flow).hostport};branch={branch}"
