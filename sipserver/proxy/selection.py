"""Best-response selection for a stateful proxy's response context (RFC 3261 §16.7 steps 6-7).

Invariants:
- Input is the list of outcomes one response context stored, in arrival order. The choice depends
  only on the statuses and that order, so it is deterministic; ties go to the earliest outcome.
- The caller never receives 430 (RFC 5626 §11.5, OB-AP-06, OB-CS-07: sent as 480) nor 503 (RFC
  3261 §16.7 step 6, PX-11: sent as 500). A status outside 200..699 is sent as 500.
- A chosen downstream response is copied, never edited in place; apart from the status line of a
  converted status and the merged challenges (PX-12), its headers and body are kept as received
  (Retry-After included). Via is left alone: fixing it for upstream is the runtime's job.
- No outcome at all gives a locally generated 408 (RFC 3261 §16.7 step 6).
- Nothing here raises on any status value.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from sipserver.sip import Response, reason_phrase

__all__ = ["Outcome", "Selection", "rank", "choose", "select_final"]

# RFC 3261 §16.7 step 6: these 4xx let the caller fix its request and retry, so they are
# preferred over other 4xx. Challenges first: they are the only ones a UA answers by itself.
_CHALLENGES = frozenset({401, 407})
_FIXABLE = frozenset({415, 420, 484})
_CHALLENGE_HEADERS = ("WWW-Authenticate", "Proxy-Authenticate")


@attrs.frozen
class Outcome:
    """How one target ended: a downstream final ``response``, or (``response`` None) a status the
    proxy stands in for because nothing usable came back (timeout 408, dead flow 430, 487)."""

    status: int
    response: Response | None = None

    @classmethod
    def of(cls, response: Response) -> Outcome:
        return cls(response.status, response)


@attrs.frozen
class Selection:
    """What the caller gets. ``response`` is a fresh copy of the chosen downstream response (with
    ``status``/``reason`` already applied), or None when the proxy must answer by itself
    (``make_response(request, status, reason, to_tag=...)``)."""

    status: int
    reason: str
    response: Response | None


def rank(status: int) -> tuple[int, int]:
    """Sort key for a stored final status; smaller is better (RFC 3261 §16.7 step 6).

    6xx first, then the lowest class; within 4xx, challenges, then 415/420/484, then the rest.
    A 503 ranks below other 5xx (it is only a hint that this one hop is overloaded). 430 ranks
    below everything: a real answer from any target beats a dead flow (OB-AP-06).
    """
    if status == 430:
        return (9, 0)
    klass = status // 100
    if klass == 6:
        return (0, 0)
    if klass in (2, 3):
        return (klass, 0)
    if klass == 4:
        if status in _CHALLENGES:
            return (4, 0)
        if status in _FIXABLE:
            return (4, 1)
        return (4, 2)
    if klass == 5:
        return (5, 1) if status == 503 else (5, 0)
    return (8, 0)  # 1xx or out of range: not a usable final, only better than a dead flow


def choose(outcomes: Sequence[Outcome]) -> Outcome | None:
    """The best outcome, the earliest among equals; None when there is none."""
    best: Outcome | None = None
    best_rank: tuple[int, int] | None = None
    for outcome in outcomes:
        r = rank(outcome.status)
        if best_rank is None or r < best_rank:
            best, best_rank = outcome, r
    return best


def _upstream_status(status: int) -> int:
    """The status the caller may see for a chosen ``status``."""
    if status == 430:
        return 480  # OB-AP-06/OB-CS-07: 430 is hop-by-hop between proxies
    if status == 503 or not 200 <= status <= 699:
        return 500  # PX-11: our caller must not think *we* are overloaded
    return status


def _copy_with_status(response: Response, status: int) -> Response:
    """A copy of ``response``; when ``status`` differs, with a new status line."""
    dup = response.copy()
    if status == dup.status:
        return dup
    return Response(status, reason_phrase(status), dup.headers, dup.body, version=dup.version)


def select_final(outcomes: Sequence[Outcome]) -> Selection:
    """Pick and prepare the final response for the caller (RFC 3261 §16.7 steps 6-7)."""
    best = choose(outcomes)
    if best is None:
        return Selection(408, reason_phrase(408), None)
    status = _upstream_status(best.status)
    if best.response is None:
        return Selection(status, reason_phrase(status), None)
    out = _copy_with_status(best.response, status)
    if status in _CHALLENGES:
        # PX-12: the caller must see every challenge of every branch so that it can answer
        # them all in one retry; values are copied line by line, unmodified.
        for other in outcomes:
            if other is best or other.response is None or other.status not in _CHALLENGES:
                continue
            for name in _CHALLENGE_HEADERS:
                for value in other.response.header_lines(name):
                    out.add_header(name, value)
    return Selection(out.status, out.reason, out)
