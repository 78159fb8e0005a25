"""Issue 16: the relay matrix. Every method x From x credentials x route form is sent at the
attacked server by a stranger (127.0.0.4, no registered flow), and what each party hears is
compared with ``expected``, the relay policy written out case by case.

One server per method (a block of 3 x 3 x 7 = 63 cases), the cases sent one after the other
and the listeners checked once at the end of the block:
- the victim (127.0.0.3, neither served nor a relay domain) hears nothing, in any case;
- the trunk (127.0.0.2, a relay domain) hears only authenticated senders (a From in our
  domain must be the authenticated user's);
- bob (a registered phone) hears only what the policy lets through to a local user.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio
from attacker import (
    DOMAIN,
    FOREIGN,
    RELAY_HOST,
    SDP,
    VICTIM_HOST,
    Scene,
    Victim,
    scene,
    sip,
    uri_of,
)

METHODS = ("INVITE", "MESSAGE", "SUBSCRIBE", "REFER", "NOTIFY", "BYE", "ACK", "OPTIONS", "REGISTER")
FROMS = {
    "local": f"sip:alice@{DOMAIN}",  # one of our users
    "foreign": f"sip:eve@{FOREIGN}",  # anybody outside
    "relay": f"sip:trunk@{RELAY_HOST}",  # somebody at the relay domain
}
CREDS = {"none": None, "valid": "alice", "other": "bob"}  # whose Proxy-Authorization is sent
FORMS = (
    "none",  # Request-URI sip:bob@example.com (REGISTER: sip:example.com)
    "route_victim",  # Route: <sip:V;lr>
    "own_token",  # Request-URI sip:x@VT;transport=tcp, Route: <the caller's own Record-Route>
    "other_token",  # Request-URI sip:x@V, Route: <bob's Record-Route from another dialog>
    "strict_route",  # Request-URI = own Record-Route URI, Route: <sip:x@VT;transport=tcp>
    "maddr",  # sip:bob@example.com:VP;maddr=127.0.0.3 (REGISTER: sip:example.com:VP;maddr=..)
    "relay",  # Request-URI sip:x@127.0.0.2:P (the trunk)
)


@attrs.frozen
class Outcome:
    to: str | None  # who hears the request: "callee" (bob's phone), "relay" (the trunk), None
    status: int | None  # the final answer the sender gets (None: no answer, ACK)


def expected(method: str, frm: str, creds: str, form: str) -> Outcome:
    """The relay policy of issue 16, for a sender on no registered flow of ours.

    1. The next hop is classified before anyone is asked who they are:
       - REGISTER for our domain (no Route elsewhere): the registrar's;
       - a token of ours naming another flow (bob's): FLOW, down that flow and nowhere else;
       - a served Request-URI without maddr: LOOKUP, bob's bindings;
       - anything else is EXTERNAL, judged on the host actually used (maddr first): the
         victim is neither served nor a relay domain: 403 before authentication. The caller's
         own token routes nowhere (it names the arrival flow), so what follows it decides.
    2. ACK has no transaction and cannot be challenged: only LOOKUP (local bindings) or FLOW
       inside a proven dialog (none here: no dlg proof for these Call-IDs); never EXTERNAL.
    3. EXTERNAL to a relay domain: only an authenticated sender (407 otherwise), whatever the
       From; a From in our domain must name the authenticated user (403 otherwise).
    4. LOOKUP or FLOW, out of a dialog: a From in our domain must authenticate as that user
       (407 / 403); a foreign From reaches local users without credentials.
    5. The registrar: 401 without credentials; To (= From here) must be the authenticated
       user (403 otherwise); a REGISTER without Contact is a query (200).
    """
    local_from = frm == "local"
    user = CREDS[creds]
    answer = None if method == "ACK" else (486 if method == "INVITE" else 200)  # what the listeners answer
    if method == "REGISTER" and form in ("none", "maddr"):
        hop = "registrar"
    elif form == "none":
        hop = "lookup"
    elif form == "other_token":
        hop = "flow"
    elif form == "relay":
        hop = "relay"
    else:
        hop = "victim"
    if method == "ACK":
        return Outcome("callee" if hop == "lookup" else None, None)
    if hop == "registrar":
        if user is None:
            return Outcome(None, 401)
        return Outcome(None, 200 if local_from and user == "alice" else 403)
    if hop == "victim":
        return Outcome(None, 403)
    if hop == "relay":
        if user is None:
            return Outcome(None, 407)
        if local_from and user != "alice":
            return Outcome(None, 403)
        return Outcome("relay", answer)
    if not local_from:
        return Outcome("callee", answer)
    if user is None:
        return Outcome(None, 407)
    if user != "alice":
        return Outcome(None, 403)
    return Outcome("callee", answer)


def _case_text(sc: Scene, victim: Victim, own: str, bob_rr: str, method: str, frm: str, creds: str, form: str,
               call_id: str) -> str:
    register = method == "REGISTER"
    user = None if register else "x"
    base = f"sip:{DOMAIN}" if register else f"sip:bob@{DOMAIN}"
    routes: list[str] = []
    if form == "none":
        ruri = base
    elif form == "route_victim":
        ruri, routes = base, [f"<sip:{victim.udp_hostport};lr>"]
    elif form == "own_token":
        ruri, routes = victim.uri(user, tcp=True), [f"<{own}>"]
    elif form == "other_token":
        ruri, routes = victim.uri(user), [bob_rr]
    elif form == "strict_route":
        ruri, routes = own, [f"<{victim.uri(user, tcp=True)}>"]
    elif form == "maddr":
        host = DOMAIN if register else f"bob@{DOMAIN}"
        ruri = f"sip:{host}:{victim.udp_port};maddr={VICTIM_HOST}"
    else:
        ruri = f"sip:{sc.relay.hostport}" if register else f"sip:x@{sc.relay.hostport}"
    extra: list[str] = {
        "SUBSCRIBE": ["Event: presence", "Expires: 60"],
        "NOTIFY": ["Event: presence", "Subscription-State: active"],
        "REFER": [f"Refer-To: <sip:carol@{DOMAIN}>"],
    }.get(method, [])
    who = CREDS[creds]
    if who is not None:
        value = sc.digest.value(who, method, ruri)
        extra.append(f"Proxy-Authorization: {value}")
        if register:
            extra.append(f"Authorization: {value}")  # the registrar reads this one
    body, ctype = {"INVITE": (SDP, "application/sdp"), "ACK": (SDP, "application/sdp"),
                   "MESSAGE": ("hello", "text/plain")}.get(method, ("", "application/sdp"))
    return sip(method, ruri, via=sc.attacker.hostport(), from_uri=FROMS[frm],
               to_uri=FROMS[frm] if register else f"sip:bob@{DOMAIN}", call_id=call_id, routes=routes,
               extra=extra, body=body, content_type=ctype)


@pytest.mark.parametrize("method", METHODS)
async def test_relay_matrix(tmp_path: Path, victim: Victim, method: str) -> None:
    async with scene(tmp_path) as sc:
        # the stranger's own call to bob: its own Record-Route and bob's, each with that call's dlg
        got, _ = await sc.call(sc.attacker, sc.bob, "bob", from_uri=FROMS["foreign"], call_id="matrix-setup", from_tag="s")
        bob_rr, own_rr = next(r for r in got if r.status == 180).header_values("record-route")[:2]
        assert sc.token_owner(own_rr) == sc.attacker.local
        own = uri_of(own_rr)
        cases = [(frm, creds, form) for frm in FROMS for creds in CREDS for form in FORMS]
        answers: dict[str, int | None] = {}
        for frm, creds, form in cases:
            call_id = f"m-{method}-{frm}-{creds}-{form}"
            text = _case_text(sc, victim, own, bob_rr, method, frm, creds, form, call_id)
            if method == "ACK":
                await sc.attacker.send(text)
                answers[call_id] = None
            else:
                resp = await sc.ask(text)
                answers[call_id] = None if resp is None else resp.status
        await trio.sleep(0.3)  # late arrivals (ACKs have no answer to wait for)
        bob_heard = {r.call_id for r in sc.bob.heard if r.method == method}
        relay_heard = {r.call_id for r in sc.relay.heard if r.method == method}
        wrong = []
        for frm, creds, form in cases:
            call_id = f"m-{method}-{frm}-{creds}-{form}"
            heard_by = [name for name, ids in (("callee", bob_heard), ("relay", relay_heard)) if call_id in ids]
            actual = Outcome(heard_by[0] if len(heard_by) == 1 else ("+".join(heard_by) or None), answers[call_id])
            want = expected(method, frm, creds, form)
            if actual != want:
                wrong.append(f"  From={frm:8} creds={creds:6} form={form:13} expected {want}, got {actual}")
        assert not wrong, f"{method}: {len(wrong)} of {len(cases)} cases differ from the policy:\n" + "\n".join(wrong)
        await victim.assert_silent(0.2)
