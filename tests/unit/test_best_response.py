"""Best-response selection (RFC 3261 §16.7 steps 6-7: PX-10, PX-11, PX-12; RFC 5626 OB-AP-06)."""

from __future__ import annotations

import pytest

from sipserver.proxy.selection import Outcome, choose, rank, select_final
from sipserver.sip import Request, Response, make_request, make_response


def _invite() -> Request:
    return make_request(
        "INVITE",
        "sip:bob@example.com",
        [
            ("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKcaller1"),
            ("From", "<sip:alice@example.com>;tag=a1"),
            ("To", "<sip:bob@example.com>"),
            ("Call-ID", "call-1@192.0.2.10"),
            ("CSeq", "1 INVITE"),
            ("Max-Forwards", "70"),
        ],
    )


def _resp(status: int, *headers: tuple[str, str], tag: str = "b1") -> Response:
    return make_response(_invite(), status, to_tag=tag, headers=list(headers))


def _out(status: int, *headers: tuple[str, str]) -> Outcome:
    return Outcome.of(_resp(status, *headers))


def test_nothing_stored_gives_local_408() -> None:
    """PX-10: no response at all -> 408, built by the proxy itself."""
    sel = select_final([])
    assert (sel.status, sel.reason, sel.response) == (408, "Request Timeout", None)


def test_486_beats_404_by_arrival_order_within_plain_4xx() -> None:
    sel = select_final([_out(486), _out(404)])
    assert sel.status == 486
    assert sel.response is not None and sel.response.status == 486


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([486, 302], 302),  # lowest class wins
        ([500, 486], 486),  # PX-10: 4xx before 5xx
        ([486, 484], 484),  # 484 is one the caller can fix
        ([404, 415], 415),
        ([420, 407], 407),  # challenges before 415/420/484
        ([503, 502], 502),  # 503 is the weakest 5xx
        ([480, 603, 302], 603),  # a 6xx always wins
    ],
)
def test_ranking(statuses: list[int], expected: int) -> None:
    assert select_final([_out(s) for s in statuses]).status == expected


def test_430_ranks_below_every_other_4xx_and_5xx() -> None:
    """OB-AP-06: a real answer from any target beats a dead flow."""
    for other in (400, 404, 480, 486, 499, 500, 503, 599):
        assert rank(430) > rank(other)
        best = choose([Outcome(430), _out(other)])
        assert best is not None and best.status == other


def test_430_and_480_gives_the_real_480() -> None:
    r480 = _resp(480, ("Retry-After", "60"))
    sel = select_final([_out(430), Outcome.of(r480)])
    assert sel.status == 480
    assert sel.response is not None and sel.response.header("Retry-After") == "60"


def test_only_430_becomes_480_never_430() -> None:
    """OB-AP-06 / OB-CS-07: the caller never sees 430."""
    sel = select_final([_out(430)])
    assert (sel.status, sel.reason) == (480, "Temporarily Unavailable")
    assert sel.response is not None
    assert sel.response.status == 480
    assert sel.response.to_bytes().startswith(b"SIP/2.0 480 Temporarily Unavailable\r\n")
    assert sel.response.to_tag == "b1"  # the rest of the downstream response is kept


def test_local_430_becomes_local_480() -> None:
    sel = select_final([Outcome(430), Outcome(430)])
    assert (sel.status, sel.response) == (480, None)


def test_503_alone_becomes_500_and_keeps_retry_after() -> None:
    """PX-11."""
    sel = select_final([_out(503, ("Retry-After", "120"))])
    assert (sel.status, sel.reason) == (500, "Server Internal Error")
    assert sel.response is not None
    assert sel.response.to_bytes().startswith(b"SIP/2.0 500 Server Internal Error\r\n")
    assert sel.response.header("Retry-After") == "120"


def test_486_and_503_gives_486() -> None:
    """PX-10 test from the checklist."""
    assert select_final([_out(503), _out(486)]).status == 486


def test_retry_after_of_chosen_response_kept() -> None:
    sel = select_final([_out(486, ("Retry-After", "30")), _out(404)])
    assert sel.response is not None and sel.response.header("Retry-After") == "30"
    # Retry-After belongs to the response that carried it, not to the context.
    sel = select_final([_out(404), _out(486, ("Retry-After", "30"))])
    assert sel.status == 404
    assert sel.response is not None and sel.response.header("Retry-After") is None


def test_chosen_response_is_a_copy() -> None:
    original = _resp(486)
    sel = select_final([Outcome.of(original)])
    assert sel.response is not None and sel.response is not original
    sel.response.add_header("X-Test", "1")
    assert not original.has_header("X-Test")


def test_challenges_from_every_401_407_are_merged_unmodified() -> None:
    """PX-12: two branches challenge with different realms; both values reach the caller."""
    pa1 = 'Digest realm="a.example", nonce="n1", algorithm=MD5'
    pa2 = 'Digest realm="b.example", nonce="n2", qop="auth"'
    wa = 'Digest realm="c.example", nonce="n3"'
    outcomes = [
        _out(486),
        _out(407, ("Proxy-Authenticate", pa1)),
        _out(401, ("WWW-Authenticate", wa)),
        _out(407, ("Proxy-Authenticate", pa2)),
    ]
    sel = select_final(outcomes)
    assert sel.status == 407
    assert sel.response is not None
    assert sel.response.header_lines("Proxy-Authenticate") == [pa1, pa2]
    assert sel.response.header_lines("WWW-Authenticate") == [wa]
    # The stored responses themselves are untouched.
    first = outcomes[1].response
    assert first is not None and first.header_lines("Proxy-Authenticate") == [pa1]


def test_challenges_not_merged_into_other_statuses() -> None:
    sel = select_final([_out(302), _out(401, ("WWW-Authenticate", 'Digest realm="x"'))])
    assert sel.status == 302
    assert sel.response is not None and not sel.response.has_header("WWW-Authenticate")


def test_out_of_range_status_is_sent_as_500() -> None:
    odd = Response(799, "Odd", list(_resp(486).headers))
    sel = select_final([Outcome.of(odd)])
    assert sel.status == 500
    assert select_final([Outcome.of(odd), _out(503)]).status == 500
    assert select_final([Outcome.of(odd), _out(430)]).status == 500
