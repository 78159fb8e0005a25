"""Transport layer (trio): UDP, TCP, TLS, WS and WSS listeners and the flow table.

The only package (with the runtime and mgmt) that does I/O. It moves bytes: one SIP message at a
time goes to a ``MessageSink``, and ``FlowTable.send`` writes one on a ``Flow``. It never parses
SIP beyond stream framing (``sipserver.sip.framer``).
"""

from .errors import ConnectFailed, FlowGone, TransportFailure
from .flows import FlowInfo, FlowLimits, FlowTable
from .listeners import BoundListener, serve
from .sink import MessageSink
from .tls import TlsConfigError, make_client_context, make_server_context

__all__ = [
    "BoundListener",
    "ConnectFailed",
    "FlowGone",
    "FlowInfo",
    "FlowLimits",
    "FlowTable",
    "MessageSink",
    "TlsConfigError",
    "TransportFailure",
    "make_client_context",
    "make_server_context",
    "serve",
]
