"""Media anchoring through rtpengine (issue 18, DESIGN.md "Media (rtpengine)").

Sans-IO modules, importable without trio: ``bencode`` (the codec), ``ng`` (ng commands,
framing, replies), ``sdp`` (the few SDP facts the planner needs), ``planner`` (whether to anchor
a call and the ng flags per leg), ``session`` (``MediaSessions``: which ng command each SIP event
needs and what its reply does to the message), ``metrics``. The one trio module is ``client``
(``NgClient``: UDP, retransmission, failover); it is not imported here, so importing this
package keeps trio out.
"""

from .metrics import MediaMetrics
from .ng import (
    NgAddress,
    NgCommand,
    NgError,
    NgFlags,
    NgOk,
    NgResult,
    NgUnavailable,
    parse_ng_address,
)
from .planner import AnchorMode, Leg, LegView, MediaProfile, classify, decide, flags_towards
from .session import (
    FailurePolicy,
    MediaCallInfo,
    MediaOutcome,
    MediaSessions,
    MediaSettings,
    MediaStep,
    StepKind,
    Verdict,
)

__all__ = [
    "AnchorMode",
    "FailurePolicy",
    "Leg",
    "MediaCallInfo",
    "LegView",
    "MediaMetrics",
    "MediaOutcome",
    "MediaProfile",
    "MediaSessions",
    "MediaSettings",
    "MediaStep",
    "NgAddress",
    "NgCommand",
    "NgError",
    "NgFlags",
    "NgOk",
    "NgResult",
    "NgUnavailable",
    "StepKind",
    "Verdict",
    "classify",
    "decide",
    "flags_towards",
    "parse_ng_address",
]
