"""Message-size limits checked before anything reads a message's values (issue 16: the cost of
everything done before authentication stays linear and bounded). Sans-IO."""

from __future__ import annotations

from .message import Message


def over_limits(msg: Message, max_headers: int, max_vias: int, max_route_values: int) -> str | None:
    """What a message carries beyond the [limits] section, naming the setting; None if nothing."""
    if msg.header_count() > max_headers:
        return f"too many headers (limit {max_headers}, limits.max_headers)"
    if len(msg.vias) > max_vias:
        return f"too many Via values (limit {max_vias}, limits.max_vias)"
    if msg.has_header("route") or msg.has_header("record-route"):
        n = len(msg.header_values("route")) + len(msg.header_values("record-route"))
        if n > max_route_values:
            return f"too many Route/Record-Route values (limit {max_route_values}, limits.max_route_values)"
    return None
