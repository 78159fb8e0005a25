"""This host's own addresses, for recognising requests addressed to the server and for writing
an address in Via/Record-Route/Path when a listener is bound to a wildcard."""

from __future__ import annotations

import socket

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
