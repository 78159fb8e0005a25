"""Actions a transaction hands back to its caller (the runtime and the proxy/registrar core).

Invariants: actions are immutable values; every method of a transaction returns a list of them in
the order they must be carried out; ``Terminated`` is the last action a transaction ever emits and
is emitted exactly once. Nothing matches on strings: callers dispatch on the class.
"""

from __future__ import annotations

import attrs

from ..sip import Request, Response


@attrs.frozen(slots=True)
class Send:
    """Send ``message`` to the transaction's peer (the runtime knows the flow / address).

    ``retransmission`` is True for copies sent again by a timer or for a retransmitted request,
    so the runtime can count them; the bytes are the same either way."""

    message: Request | Response
    retransmission: bool = False


@attrs.frozen(slots=True)
class DeliverResponse:
    """Pass a response up to the core (client transactions, RFC 3261 §17.1)."""

    response: Response


@attrs.frozen(slots=True)
class DeliverRequest:
    """Pass a request up to the core: an ACK that matched an INVITE server transaction in the
    ACCEPTED state, i.e. an ACK for a 2xx (RFC 6026 §8.7, "ACK / to TU")."""

    request: Request


@attrs.frozen(slots=True)
class Timeout:
    """Timer B or F (client: the core treats it as a 408, RFC 3261 §16.7 / §8.1.3.1) or
    Timer H (INVITE server: the ACK for a 3xx-6xx never came, §17.2.1) fired."""


@attrs.frozen(slots=True)
class TransportError:
    """Sending failed or the connection went away (RFC 3261 §17.1.4 / §17.2.4); for client
    transactions the core treats it as a 503 (§16.9)."""


@attrs.frozen(slots=True)
class Terminated:
    """The transaction reached TERMINATED and must be dropped from its table."""


Action = Send | DeliverResponse | DeliverRequest | Timeout | TransportError | Terminated
