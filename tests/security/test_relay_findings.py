"""Issue 16: the attacker's findings against the relay policy, one test per finding, on the wire.

The server runs as in the issue: auth on ([users] alice, bob, carol; auth.realm example.com),
proxy.relay_domains = ["itsp.example", "127.0.0.2"] (the second is a trunk we listen on).
bob and carol are registered phones; the attacker sends from 127.0.0.4 with no account; the
victim (127.0.0.3, a UDP socket and a TCP listener) must hear nothing, ever.

Wire text in the docstrings is abridged to the lines that matter (Via, Max-Forwards, CSeq and
Content-Length are always there). TOKEN(x) is a flow token of ours naming x's flow, S the
server's UDP address, V the victim's UDP and VT its TCP address.

Each test was first written as an attacker found the hole, then the hole was closed: the
expected answers below are the server's today.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest
import trio
from attacker import (
    ATTACKER_HOST,
    DOMAIN,
    FOREIGN,
    OWN_HOST,
    RELAY_HOST,
    SDP,
    VICTIM_HOST,
    Scene,
    Victim,
    exchange,
    register_user,
    scene,
    server_tcp,
    server_udp,
    sip,
    uri_of,
    without_param,
)
from harness import TcpUA, UdpUA, running_server

SILENCE = 0.5  # seconds a victim is listened to after the attack
ALICE = f"sip:alice@{DOMAIN}"
MALLORY = f"sip:mallory@{FOREIGN}"


def status(resp: object) -> object:
    return None if resp is None else (resp.status, resp.reason)  # type: ignore[attr-defined]


async def _own_and_bob_tokens(sc: Scene, call_id: str = "setup-call", from_tag: str = "mtag") -> tuple[str, str]:
    """The attacker calls bob (a stranger may call a local user); the 180 carries two
    Record-Routes of ours: bob's leg on top, the attacker's own leg below. Returns the Route
    values (bob's, own), each with the dlg proof of that call."""
    got, _ = await sc.call(sc.attacker, sc.bob, "bob", from_uri=MALLORY, call_id=call_id, from_tag=from_tag)
    ringing = next(r for r in got if r.status == 180)
    bob_rr, own_rr = ringing.header_values("record-route")[:2]
    assert sc.token_owner(own_rr) == sc.attacker.local  # the bottom one names our own flow
    assert sc.token_owner(bob_rr)[0] == OWN_HOST  # the top one names bob's flow
    return bob_rr, own_rr


# ============================================================================ finding 1
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_finding1_route_to_victim_is_not_relayed(tmp_path: Path, victim: Victim, own_victim: Victim, tcp: bool) -> None:
    """Finding 1, relay through a Route header. Unauthenticated, foreign (and local) From:

        INVITE sip:bob@example.com SIP/2.0
        From: <sip:mallory@foreign.example>;tag=..
        Route: <sip:V;lr>                       (or <sip:VT;transport=tcp;lr>)
    ->  SIP/2.0 403 Forbidden (relaying to 127.0.0.3 is not allowed)

    The same Route naming a port on the server's own address that is not one of its SIP ports
    is no server of ours either: 403 (relaying to 127.0.0.1 port P is not allowed). Neither
    victim hears a byte, and no TCP connection is opened."""
    async with scene(tmp_path) as sc:
        for target, expect in ((victim, 403), (own_victim, 403)):
            hostport = target.tcp_hostport if tcp else target.udp_hostport
            route = f"<sip:{hostport};transport=tcp;lr>" if tcp else f"<sip:{hostport};lr>"
            for method in ("INVITE", "MESSAGE", "OPTIONS", "SUBSCRIBE"):
                for frm in (MALLORY, ALICE):
                    text = sip(method, f"sip:bob@{DOMAIN}", via=sc.attacker.hostport(), from_uri=frm, routes=[route],
                               call_id=f"f1-{secrets.token_hex(4)}",
                               body=SDP if method == "INVITE" else "", extra=["Event: presence"] if method == "SUBSCRIBE" else ())
                    resp = await sc.ask(text)
                    assert resp is not None and resp.status == expect, (method, frm, target.host, status(resp))
                    assert f"relaying to {target.host}" in resp.reason and "is not allowed" in resp.reason
        assert not [r for r in sc.bob.heard if r.call_id.startswith("f1-")]  # nor to the Request-URI's user
        await victim.assert_silent(SILENCE)
        await own_victim.assert_silent(0)


# ============================================================================ finding 2
async def test_finding2_own_token_relays_nowhere_loose_or_strict(tmp_path: Path, victim: Victim) -> None:
    """Finding 2, a valid flow token of the caller's own flow. The attacker calls bob and reads
    its own Record-Route from the 180:

        SIP/2.0 180 Ringing
        Record-Route: <sip:TOKEN(bob)@S;lr;dlg=..>, <sip:TOKEN(attacker)@S;lr;dlg=..>

    then tries to relay through it, loose routing and strict routing:

        INVITE sip:x@V SIP/2.0                   INVITE sip:TOKEN(attacker)@S;lr;dlg=.. SIP/2.0
        Route: <sip:TOKEN(attacker)@S;lr;..>     Route: <sip:x@V>
    ->  403 Forbidden (relaying to 127.0.0.3 is not allowed), both, over UDP and TCP victims,
    unauthenticated and with alice's valid credentials alike."""
    async with scene(tmp_path) as sc:
        _, own_rr = await _own_and_bob_tokens(sc)
        own = uri_of(own_rr)
        for target in (victim.uri("x"), victim.uri("x", tcp=True)):
            loose = dict(ruri=target, routes=[f"<{own}>"])
            strict = dict(ruri=own, routes=[f"<{target}>"])
            for form in (loose, strict):
                for creds in (False, True):
                    extra = [sc.creds("alice", "INVITE", form["ruri"])] if creds else []
                    text = sip("INVITE", form["ruri"], via=sc.attacker.hostport(), from_uri=ALICE if creds else MALLORY,
                               routes=form["routes"], body=SDP, extra=extra)
                    resp = await sc.ask(text)
                    assert resp is not None and resp.status == 403, (form, creds, status(resp))
                    assert f"relaying to {VICTIM_HOST}" in resp.reason
        await victim.assert_silent(SILENCE)


async def test_finding2_token_names_its_own_flow_only(tmp_path: Path, victim: Victim) -> None:
    """Finding 2, a token of another flow authorises that flow and nothing else. With bob's
    token (read from the 180 of the attacker's own call to bob):

        INVITE sip:x@V SIP/2.0
        From: <sip:mallory@foreign.example>;tag=..
        Route: <sip:TOKEN(bob)@S;lr>, <sip:V;lr>

    goes down bob's flow (bob's phone answers 486), Request-URI and the rest of the Route
    untouched; the victim named in both hears nothing."""
    async with scene(tmp_path) as sc:
        bob_rr, _ = await _own_and_bob_tokens(sc)
        bob_token = without_param(uri_of(bob_rr), "dlg")
        text = sip("INVITE", victim.uri("x"), via=sc.attacker.hostport(), from_uri=MALLORY, call_id="f2-bob",
                   routes=[f"<{bob_token}>", f"<sip:{victim.udp_hostport};lr>"], body=SDP)
        resp = await sc.ask(text)
        assert resp is not None and resp.status == 486  # bob's answer
        seen = sc.bob.heard_call("f2-bob", "INVITE")
        assert len(seen) == 1 and seen[0].uri_text == victim.uri("x")
        assert [r.raw for r in seen[0].routes] == [f"<sip:{victim.udp_hostport};lr>"]
        await victim.assert_silent(SILENCE)


async def test_finding2_trunk_token_does_not_open_the_trunk(tmp_path: Path, victim: Victim) -> None:
    """Finding 2, the flow a token names is the trunk's. alice (authenticated) calls out:

        INVITE sip:x@127.0.0.2:P SIP/2.0          (Proxy-Authorization: alice's)
    the trunk answers 180 and alice's phone reads the Record-Route naming the trunk's flow:
        SIP/2.0 180 Ringing
        Record-Route: <sip:TOKEN(trunk)@S;lr;dlg=..>, <sip:TOKEN(alice)@S;lr;dlg=..>

    Then a stranger with that token and no credentials:

        INVITE sip:900premium@127.0.0.2:P SIP/2.0
        From: <sip:mallory@foreign.example>;tag=..
        Route: <sip:TOKEN(trunk)@S;lr>
    expected  407 Proxy Authentication Required, the trunk hears nothing
    was       the trunk receives the INVITE (and answers it: 486 here)."""
    async with scene(tmp_path) as sc:
        alice = await sc.ua(OWN_HOST)
        ruri = f"sip:x@{sc.relay.hostport}"
        got = await exchange(alice, sip("INVITE", ruri, via=alice.hostport(), from_uri=ALICE, call_id="out-1",
                                        body=SDP, extra=[sc.creds("alice", "INVITE", ruri)]))
        ringing = next(r for r in got if r.status == 180)
        trunk_rr = ringing.header_values("record-route")[0]
        assert sc.token_owner(trunk_rr)[0] == RELAY_HOST
        trunk_token = without_param(uri_of(trunk_rr), "dlg")
        fraud = sip("INVITE", f"sip:900premium@{sc.relay.hostport}", via=sc.attacker.hostport(), from_uri=MALLORY,
                    call_id="fraud-1", routes=[f"<{trunk_token}>"], body=SDP)
        resp = await sc.ask(fraud)
        await trio.sleep(0.2)
        assert not sc.relay.heard_call("fraud-1"), "the trunk received the stranger's INVITE"
        assert resp is not None and resp.status == 407, status(resp)
        await victim.assert_silent(0)


# ============================================================================ finding 3
async def test_finding3_relay_domain_needs_credentials(tmp_path: Path, victim: Victim) -> None:
    """Finding 3, relay_domains without credentials. Whatever the From (foreign, the relay
    domain's own, a local user's), unauthenticated:

        INVITE sip:x@itsp.example SIP/2.0          ->  407 (nothing is resolved or sent)
        INVITE sip:x@127.0.0.2:P SIP/2.0           ->  407, the trunk hears nothing
        MESSAGE sip:bob@example.com SIP/2.0
        Route: <sip:127.0.0.2:P;lr>                ->  407, the trunk hears nothing

    With alice's credentials the trunk gets it (the positive path), including through
    ``maddr`` naming the trunk on a served Request-URI (the address actually used is checked)."""
    async with scene(tmp_path) as sc:
        trunk = sc.relay.hostport
        cases = [
            ("INVITE", "sip:x@itsp.example", []),
            ("INVITE", f"sip:x@{trunk}", []),
            ("MESSAGE", f"sip:x@{trunk}", []),
            ("MESSAGE", f"sip:bob@{DOMAIN}", [f"<sip:{trunk};lr>"]),
        ]
        for frm in (MALLORY, "sip:trunk@itsp.example", f"sip:trunk@{RELAY_HOST}", ALICE):
            for method, ruri, routes in cases:
                text = sip(method, ruri, via=sc.attacker.hostport(), from_uri=frm, routes=routes,
                           body=SDP if method == "INVITE" else "hello", content_type="application/sdp" if method == "INVITE" else "text/plain")
                resp = await sc.ask(text)
                assert resp is not None and resp.status == 407, (frm, method, ruri, status(resp))
        await trio.sleep(0.2)
        assert not sc.relay.heard, [r.start_line() for r in sc.relay.heard]
        # the positive path: authenticated, the trunk hears it
        for call_id, ruri in (("pos-1", f"sip:x@{trunk}"), ("pos-2", f"sip:bob@{DOMAIN}:{trunk.split(':')[1]};maddr={RELAY_HOST}")):
            text = sip("MESSAGE", ruri, via=sc.attacker.hostport(), from_uri=ALICE, call_id=call_id, body="hi",
                       content_type="text/plain", extra=[sc.creds("alice", "MESSAGE", ruri)])
            resp = await sc.ask(text)
            assert resp is not None and resp.status == 200, (ruri, status(resp))
            assert sc.relay.heard_call(call_id, "MESSAGE")
        await victim.assert_silent(SILENCE)


async def test_finding3_maddr_to_victim_refused_even_authenticated(tmp_path: Path, victim: Victim) -> None:
    """Finding 3, ``maddr`` is the host actually used. With alice's valid credentials:

        INVITE sip:x@itsp.example;maddr=127.0.0.3 SIP/2.0            (relay-domain host)
        INVITE sip:bob@example.com:VP;maddr=127.0.0.3 SIP/2.0         (served host)
        INVITE sip:bob@example.com:VTP;maddr=127.0.0.3;transport=tcp SIP/2.0
        Route: <sip:itsp.example;maddr=127.0.0.3;lr>                  (in a Route)
    ->  403 Forbidden (relaying to 127.0.0.3 is not allowed); the victim hears nothing."""
    async with scene(tmp_path) as sc:
        vp, vtp = victim.udp_port, victim.tcp_port
        cases = [
            (f"sip:x@itsp.example:{vp};maddr={VICTIM_HOST}", []),
            (f"sip:bob@{DOMAIN}:{vp};maddr={VICTIM_HOST}", []),
            (f"sip:bob@{DOMAIN}:{vtp};maddr={VICTIM_HOST};transport=tcp", []),
            (f"sip:bob@{DOMAIN}", [f"<sip:itsp.example:{vp};maddr={VICTIM_HOST};lr>"]),
            (f"sip:bob@{DOMAIN}", [f"<sip:{DOMAIN}:{vtp};maddr={VICTIM_HOST};transport=tcp;lr>"]),
        ]
        for ruri, routes in cases:
            for method in ("INVITE", "MESSAGE"):
                text = sip(method, ruri, via=sc.attacker.hostport(), from_uri=ALICE, routes=routes,
                           call_id=f"f3-{secrets.token_hex(4)}", body=SDP if method == "INVITE" else "",
                           extra=[sc.creds("alice", method, ruri)])
                resp = await sc.ask(text)
                assert resp is not None and resp.status == 403, (method, ruri, routes, status(resp))
                assert f"relaying to {VICTIM_HOST} is not allowed" in resp.reason
        assert not [r for r in sc.bob.heard if r.call_id.startswith("f3-")]
        await victim.assert_silent(SILENCE)


async def test_finding3_own_host_ports_not_reachable_authenticated(tmp_path: Path, own_victim: Victim) -> None:
    """Finding 3, the served host on a port that is not ours. With alice's valid credentials:

        MESSAGE sip:x@127.0.0.1:VTP;transport=tcp SIP/2.0
        Content-Type: text/plain

        FLUSHALL
    also   MESSAGE sip:x@127.0.0.1:VP SIP/2.0
    and    MESSAGE sip:x@example.com:VTP;maddr=localhost;transport=tcp SIP/2.0
    expected  403 Forbidden, nothing reaches 127.0.0.1:VP / VTP
    was       the server sends the MESSAGE there (UDP datagram; TCP connection, bytes
              'MESSAGE sip:x@127.0.0.1:VTP;transport=tcp SIP/2.0 ... FLUSHALL')."""
    async with scene(tmp_path) as sc:
        alice = await sc.ua(ATTACKER_HOST)
        ruris = [
            own_victim.uri("x", tcp=True),
            own_victim.uri("x"),
            f"sip:x@{DOMAIN}:{own_victim.tcp_port};maddr=localhost;transport=tcp",
        ]
        answers = []
        for ruri in ruris:
            text = sip("MESSAGE", ruri, via=alice.hostport(), from_uri=ALICE, body="FLUSHALL\r\n",
                       content_type="text/plain", extra=[sc.creds("alice", "MESSAGE", ruri)])
            answers.append(status(await sc.ask(text, alice, timeout=0.5)))
        await own_victim.assert_silent(SILENCE)
        assert all(a is not None and a[0] == 403 for a in answers), answers


# ============================================================================ finding 4
FINDING4_METHODS = ("BYE", "NOTIFY", "INFO", "UPDATE", "PRACK")


async def test_finding4_made_up_to_tag_proves_nothing(tmp_path: Path, victim: Victim) -> None:
    """Finding 4, a made-up To tag. Unauthenticated, claiming a local user:

        NOTIFY sip:bob@example.com SIP/2.0
        From: <sip:alice@example.com>;tag=..
        To: <sip:bob@example.com>;tag=anything
        Event: check-sync
    ->  407 Proxy Authentication Required; bob's phone hears nothing.

    The same for BYE, INFO, UPDATE, PRACK; and with a Route of ours in front: bob's real token
    with a made-up ``dlg``, or bob's token with the genuine ``dlg`` of another dialog (the
    attacker's own call to bob, other Call-ID)."""
    async with scene(tmp_path) as sc:
        bob_rr, _ = await _own_and_bob_tokens(sc)
        bob_token = without_param(uri_of(bob_rr), "dlg")
        route_forms = [
            ("no Route", f"sip:bob@{DOMAIN}", []),
            ("bob's token, made-up dlg", "sip:bob@10.0.0.9", [f"<{bob_token};dlg=AAAAAAAAAAAAAAAAAAAAAA>"]),
            ("bob's token, other dialog's dlg", "sip:bob@10.0.0.9", [bob_rr]),
        ]
        n = 0
        for name, ruri, routes in route_forms:
            for method in FINDING4_METHODS:
                n += 1
                extra = {"NOTIFY": ["Event: check-sync", "Subscription-State: active"], "PRACK": ["RAck: 1 1 INVITE"]}.get(method, [])
                text = sip(method, ruri, via=sc.attacker.hostport(), from_uri=ALICE, to_uri=f"sip:bob@{DOMAIN}",
                           to_tag="anything", call_id=f"f4-{n}", routes=routes, extra=extra, cseq=2)
                resp = await sc.ask(text)
                assert resp is not None and resp.status == 407, (name, method, status(resp))
        await trio.sleep(0.2)
        assert not [r for r in sc.bob.heard if r.call_id.startswith("f4-")], "bob heard a made-up in-dialog request"
        await victim.assert_silent(0)


async def test_finding4_bye_with_route_to_victim(tmp_path: Path, victim: Victim) -> None:
    """Finding 4, a made-up dialog aimed at the victim:

        BYE sip:bob@example.com SIP/2.0
        From: <sip:alice@example.com>;tag=..         (and a foreign From)
        To: <sip:bob@example.com>;tag=anything
        Route: <sip:V;lr>                            (and <sip:VT;transport=tcp;lr>)
    ->  403 Forbidden (relaying to 127.0.0.3 is not allowed); the victim hears nothing."""
    async with scene(tmp_path) as sc:
        for route in (f"<sip:{victim.udp_hostport};lr>", f"<sip:{victim.tcp_hostport};transport=tcp;lr>"):
            for frm in (ALICE, MALLORY):
                text = sip("BYE", f"sip:bob@{DOMAIN}", via=sc.attacker.hostport(), from_uri=frm, to_tag="anything",
                           routes=[route], cseq=2)
                resp = await sc.ask(text)
                assert resp is not None and resp.status == 403, (route, frm, status(resp))
        await victim.assert_silent(SILENCE)


async def test_finding4_genuine_dialog_proof_is_the_exemption(tmp_path: Path) -> None:
    """Finding 4, the positive control: the in-dialog exemption is the dlg proof. alice calls bob
    with credentials; bob's phone sees Record-Route: <..TOKEN(bob)..;dlg=P1>, <..TOKEN(alice)..;dlg=P2>.
    A BYE in that dialog (same Call-ID, alice's From tag, bob's To tag, the route set) passes
    with no credentials; the same BYE under another Call-ID is challenged (407)."""
    async with scene(tmp_path) as sc:
        alice = await sc.ua(OWN_HOST)
        got, inv = await sc.call(alice, sc.bob, "bob", from_uri=ALICE, call_id="dlg-ok", from_tag="atag",
                                 extra=[sc.creds("alice", "INVITE", f"sip:bob@{DOMAIN}")])
        assert got[-1].status == 486
        ringing = next(r for r in got if r.status == 180)
        routes = list(reversed(ringing.header_values("record-route")))  # the caller's route set
        for call_id, expect in (("dlg-ok", 200), ("dlg-other", 407)):
            text = sip("BYE", "sip:bob@10.0.0.9", via=alice.hostport(), from_uri=ALICE, from_tag="atag",
                       to_uri=f"sip:bob@{DOMAIN}", to_tag="peer", call_id=call_id, routes=routes, cseq=3)
            resp = await sc.ask(text, alice)
            assert resp is not None and resp.status == expect, (call_id, status(resp))
        assert sc.bob.heard_call("dlg-ok", "BYE") and not sc.bob.heard_call("dlg-other")


async def test_finding4_one_dialogs_proof_does_not_carry_another_flow(tmp_path: Path) -> None:
    """Finding 4, a genuine proof on the wrong Route. The attacker calls bob (Call-ID C, From tag
    T) and carol, and keeps its own Record-Route of the first call and carol's token of the
    second:

        MESSAGE sip:carol@example.com SIP/2.0
        From: <sip:alice@example.com>;tag=T
        To: <sip:carol@example.com>;tag=any
        Call-ID: C
        Route: <sip:TOKEN(attacker)@S;lr;dlg=PROOF(C,T)>, <sip:TOKEN(carol)@S;lr>
    expected  407 Proxy Authentication Required; carol hears nothing
    was       carol's phone gets 'MESSAGE ... From: <sip:alice@example.com>' and the attacker 200."""
    async with scene(tmp_path) as sc:
        _, own_rr = await _own_and_bob_tokens(sc, call_id="C-1", from_tag="T-1")
        got, _ = await sc.call(sc.attacker, sc.carol, "carol", from_uri=MALLORY, call_id="C-2", from_tag="T-2")
        carol_rr = next(r for r in got if r.status == 180).header_values("record-route")[0]
        assert sc.token_owner(carol_rr)[0] == OWN_HOST
        for method in ("MESSAGE", "ACK"):
            text = sip(method, f"sip:carol@{DOMAIN}", via=sc.attacker.hostport(), from_uri=ALICE, from_tag="T-1",
                       to_uri=f"sip:carol@{DOMAIN}", to_tag="any", call_id="C-1", cseq=7,
                       routes=[own_rr, f"<{without_param(uri_of(carol_rr), 'dlg')}>"],
                       body="it's me, alice", content_type="text/plain")
            if method == "ACK":
                await sc.attacker.send(text)
            else:
                resp = await sc.ask(text)
                heard = sc.carol.heard_call("C-1")
                assert not heard, f"carol heard {[(r.method, r.header('from')) for r in heard]} (answer {status(resp)})"
        await trio.sleep(0.2)
        assert not sc.carol.heard_call("C-1")


# ============================================================================ finding 5
async def test_finding5_ack_without_transaction_goes_nowhere(tmp_path: Path, victim: Victim) -> None:
    """Finding 5, an ACK matching no transaction cannot be challenged, so it may only go down a
    proven dialog flow or to local bindings. Each with an SDP body:

        ACK sip:x@V SIP/2.0                                   (and sip:x@VT;transport=tcp)
        ACK sip:bob@example.com SIP/2.0 / Route: <sip:V;lr>
        ACK sip:bob@example.com:VP;maddr=127.0.0.3 SIP/2.0
        ACK sip:x@V SIP/2.0 / Route: <sip:TOKEN(attacker)@S;lr>               (own token)
        ACK sip:TOKEN(attacker)@S;lr SIP/2.0 / Route: <sip:x@VT;transport=tcp> (strict)
        ACK sip:x@127.0.0.2:P SIP/2.0 + alice's Proxy-Authorization           (relay domain)
        ACK sip:x@V SIP/2.0 / Route: <sip:TOKEN(bob)@S;lr>    (a flow, out of any dialog)
    ->  nothing is forwarded anywhere: not to the victim, not to the trunk, not to bob.
    Positive controls: the same ACK to sip:bob@example.com (a local binding) and down bob's
    token inside the attacker's own dialog (genuine dlg, right Call-ID and tags) reach bob."""
    async with scene(tmp_path) as sc:
        bob_rr, own_rr = await _own_and_bob_tokens(sc, call_id="D-1", from_tag="dtag")
        own, bob_token = uri_of(own_rr), without_param(uri_of(bob_rr), "dlg")
        relay_ruri = f"sip:x@{sc.relay.hostport}"
        nowhere = [
            (victim.uri("x"), [], []),
            (victim.uri("x", tcp=True), [], []),
            (f"sip:bob@{DOMAIN}", [f"<sip:{victim.udp_hostport};lr>"], []),
            (f"sip:bob@{DOMAIN}", [f"<sip:{victim.tcp_hostport};transport=tcp;lr>"], []),
            (f"sip:bob@{DOMAIN}:{victim.udp_port};maddr={VICTIM_HOST}", [], []),
            (victim.uri("x"), [f"<{own}>"], []),
            (own, [f"<{victim.uri('x', tcp=True)}>"], []),
            (relay_ruri, [], [sc.creds("alice", "ACK", relay_ruri)]),
            (victim.uri("x"), [f"<{bob_token}>"], []),
            (victim.uri("x"), [bob_rr], []),  # genuine proof, but of another Call-ID
        ]
        for n, (ruri, routes, extra) in enumerate(nowhere):
            for frm in (MALLORY, ALICE):
                await sc.attacker.send(sip("ACK", ruri, via=sc.attacker.hostport(), from_uri=frm, to_tag="peer",
                                           call_id=f"ack-{n}", routes=routes, extra=extra, body=SDP))
        # positive controls
        await sc.attacker.send(sip("ACK", f"sip:bob@{DOMAIN}", via=sc.attacker.hostport(), from_uri=MALLORY,
                                   to_tag="peer", call_id="ack-local", body=SDP))
        await sc.attacker.send(sip("ACK", "sip:bob@10.0.0.9", via=sc.attacker.hostport(), from_uri=MALLORY,
                                   from_tag="dtag", to_tag="peer", call_id="D-1", cseq=2,
                                   routes=[own_rr, bob_rr], body=SDP))
        await victim.assert_silent(SILENCE)
        assert not [r for r in sc.bob.heard + sc.relay.heard if r.call_id.startswith("ack-") and r.call_id != "ack-local"]
        assert sc.bob.heard_call("ack-local", "ACK")
        assert sc.bob.heard_call("D-1", "ACK")


# ============================================================================ finding 6
def _route_flood(ua: UdpUA, n: int, call_id: str) -> str:
    """One datagram: OPTIONS with ``n`` Route values naming the server (each ~19 bytes)."""
    values = ", ".join([f"<sip:{OWN_HOST};lr>"] * n)
    return sip("OPTIONS", f"sip:nobody@{DOMAIN}", via=ua.hostport(), from_uri=MALLORY, call_id=call_id,
               extra=[f"Route: {values}"])


async def _handling_time(ua: UdpUA, n: int, reps: int) -> tuple[float, object]:
    """The least CPU time of this thread (the server runs in it, in-process) over ``reps``
    round trips, and the answer. CPU time, not wall time: on a busy machine a long handling is
    preempted more often than a short one, which would skew a wall-clock ratio."""
    times, answer = [], None
    for i in range(reps):
        call_id = f"flood-{n}-{i}-{secrets.token_hex(3)}"
        text = _route_flood(ua, n, call_id)
        t0 = time.thread_time()
        got = await exchange(ua, text, timeout=5)
        times.append(time.thread_time() - t0)
        answer = status(got[-1]) if got else None
    return min(times), answer


SMALL, LARGE = 300, 3000


async def _ratio(ua: UdpUA) -> tuple[float, float, object, object]:
    small, large = [], []
    a_small = a_large = None
    for _ in range(3):  # interleaved, so a busy moment of the machine hits both sizes
        t, a_small = await _handling_time(ua, SMALL, 3)
        small.append(t)
        t, a_large = await _handling_time(ua, LARGE, 3)
        large.append(t)
    return min(small), min(large), a_small, a_large


async def test_finding6_route_values_limit_and_linear_cost(tmp_path: Path) -> None:
    """Finding 6, quadratic Route processing. One datagram carrying 3,000 Route values that name
    the server, against 150:

        OPTIONS sip:nobody@example.com SIP/2.0
        Route: <sip:127.0.0.1;lr>, <sip:127.0.0.1;lr>, ... (150, 300 or 3,000 values)
    ->  400 Bad Request (too many Route/Record-Route values (limit 32, limits.max_route_values))

    Complexity, not absolute time: t(3000) < 20 t(300). Ten times the values cost about ten
    times the time when handling is linear (the bytes alone are linear: parsing a 57 KB datagram
    costs ~20 times a 3 KB one, so 150 against 3,000 values would sit right at 20 and flake on a
    busy machine), a hundred times when quadratic. Each size is the least CPU time of 9 round
    trips, interleaved. With limits.max_route_values = 10,000 the values are all popped (all ours) and
    the request is handled (480, nobody is registered): the same bound holds; 150 values are
    checked to get the same 400 as 3,000 under the default limit."""
    async with running_server(tmp_path / "default") as server:
        ua = await UdpUA.open(server_udp(server), local_host=ATTACKER_HOST)
        t_small, t_large, a_small, a_large = await _ratio(ua)
        _, a_150 = await _handling_time(ua, 150, 1)
        for a in (a_150, a_small, a_large):
            assert a is not None and a[0] == 400 and "limits.max_route_values" in a[1], a  # type: ignore[index]
        assert t_large < 20 * t_small, f"{SMALL} values: {t_small * 1e3:.2f} ms, {LARGE} values: {t_large * 1e3:.2f} ms"
    async with running_server(tmp_path / "raised", limits={"max_route_values": 10_000}) as server:
        ua = await UdpUA.open(server_udp(server), local_host=ATTACKER_HOST)
        t_small, t_large, a_small, a_large = await _ratio(ua)
        assert a_small == a_large and a_small is not None and a_small[0] == 480, (a_small, a_large)  # type: ignore[index]
        assert t_large < 20 * t_small, f"{SMALL} values: {t_small * 1e3:.2f} ms, {LARGE} values: {t_large * 1e3:.2f} ms"


# ============================================================================ finding 7
def _stray_2xx(sc: Scene, via2: str, call_id: str, *, record_route: str | None = None, to_tag: str = "b") -> str:
    """A 200 OK to INVITE that no client transaction of ours sent: top Via ours."""
    lines = [
        "SIP/2.0 200 OK",
        f"Via: SIP/2.0/UDP {sc.server_hostport};branch=z9hG4bKsv0123456789ab.cdef012345",
        f"Via: {via2}",
    ]
    if record_route:
        lines.append(f"Record-Route: {record_route}")
    lines += [
        f"From: <sip:x@{FOREIGN}>;tag=a",
        f"To: <sip:bob@{DOMAIN}>;tag={to_tag}",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        f"Contact: <sip:bob@{OWN_HOST}:9>",
        "Content-Type: application/sdp",
        f"Content-Length: {len(SDP)}",
        "",
        SDP,
    ]
    return "\r\n".join(lines)


async def test_finding7_stray_2xx_is_not_reflected(tmp_path: Path, victim: Victim) -> None:
    """Finding 7, the server as a reflector. Sent to the server over UDP and TCP:

        SIP/2.0 200 OK
        Via: SIP/2.0/UDP S;branch=z9hG4bKsv0123456789ab.cdef012345
        Via: SIP/2.0/UDP V;branch=z9hG4bKvictim          (also received=127.0.0.3;rport=VP,
                                                           SIP/2.0/TCP VT)
        [Record-Route: <sip:V;lr>  |  <sip:TOKEN(attacker)@S;lr>]
        CSeq: 1 INVITE
        (SDP body)
    ->  dropped: the victim hears nothing."""
    async with scene(tmp_path) as sc:
        _, own_rr = await _own_and_bob_tokens(sc)
        local = await sc.ua(OWN_HOST)  # a sender on the server's own host, too
        stream = await TcpUA.open(server_tcp(sc.server))
        vias = [
            f"SIP/2.0/UDP {victim.udp_hostport};branch=z9hG4bKvictim",
            f"SIP/2.0/UDP {victim.udp_hostport};branch=z9hG4bKvictim;received={VICTIM_HOST};rport={victim.udp_port}",
            f"SIP/2.0/TCP {victim.tcp_hostport};branch=z9hG4bKvictim",
        ]
        rrs = [None, f"<sip:{victim.udp_hostport};lr>", f"<sip:{victim.tcp_hostport};transport=tcp;lr>", own_rr]
        n = 0
        for via2 in vias:
            for rr in rrs:
                for sender in (sc.attacker, local, stream):
                    n += 1
                    await sender.send(_stray_2xx(sc, via2, f"stray-{n}", record_route=rr))
        await victim.assert_silent(SILENCE)
        await stream.close()


async def test_finding7_made_up_2xx_goes_only_down_a_callers_flow(tmp_path: Path) -> None:
    """Finding 7, a made-up 2xx naming a flow of ours. With the trunk's token (as in finding 2)
    or bob's (from the attacker's own call to bob):

        SIP/2.0 200 OK
        Via: SIP/2.0/UDP S;branch=z9hG4bKsv0123456789ab.cdef012345
        Via: SIP/2.0/UDP 127.0.0.2:P;branch=z9hG4bKx
        Record-Route: <sip:TOKEN(trunk)@S;lr>
        Call-ID: made-up
    expected  dropped (no dialog of ours has this Call-ID; the token names no caller of it)
    was       the trunk (or bob's phone) receives the 200 OK."""
    async with scene(tmp_path) as sc:
        bob_rr, _ = await _own_and_bob_tokens(sc)
        alice = await sc.ua(OWN_HOST)
        ruri = f"sip:x@{sc.relay.hostport}"
        got = await exchange(alice, sip("INVITE", ruri, via=alice.hostport(), from_uri=ALICE, call_id="out-2",
                                        body=SDP, extra=[sc.creds("alice", "INVITE", ruri)]))
        trunk_rr = next(r for r in got if r.status == 180).header_values("record-route")[0]
        for peer, rr, call_id in ((sc.relay, trunk_rr, "made-up-1"), (sc.bob, bob_rr, "made-up-2")):
            await sc.attacker.send(_stray_2xx(sc, f"SIP/2.0/UDP {peer.hostport};branch=z9hG4bKx", call_id,
                                              record_route=f"<{without_param(uri_of(rr), 'dlg')}>"))
        await trio.sleep(SILENCE)
        leaked = [(r.status, r.call_id) for r in sc.relay.responses + sc.bob.responses if r.call_id.startswith("made-up")]
        assert not leaked, f"made-up 2xx forwarded: {leaked}"


# ============================================================================ finding 10
async def test_finding10_no_user_enumeration(tmp_path: Path) -> None:
    """Finding 10a. Unauthenticated, from outside:

        INVITE sip:nobody@example.com SIP/2.0     (no such user)
        INVITE sip:alice@example.com SIP/2.0      (a user, not registered)
    ->  both 480 Temporarily Unavailable, same reason phrase (the same for MESSAGE). Only an
    authenticated caller learns the difference (404 Not Found for nobody)."""
    async with scene(tmp_path) as sc:
        for method in ("INVITE", "MESSAGE", "SUBSCRIBE", "OPTIONS"):
            answers = []
            for user in ("nobody", "alice"):
                text = sip(method, f"sip:{user}@{DOMAIN}", via=sc.attacker.hostport(), from_uri=MALLORY,
                           body=SDP if method == "INVITE" else "", extra=["Event: presence"] if method == "SUBSCRIBE" else ())
                answers.append(status(await sc.ask(text)))
            assert answers[0] == answers[1] == (480, "Temporarily Unavailable"), (method, answers)
        ruri = f"sip:nobody@{DOMAIN}"
        resp = await sc.ask(sip("MESSAGE", ruri, via=sc.attacker.hostport(), from_uri=ALICE,
                                extra=[sc.creds("alice", "MESSAGE", ruri)]))
        assert resp is not None and resp.status == 404


async def _message_to_bob(sc: Scene, ua: UdpUA, call_id: str) -> object:
    return status(await sc.ask(sip("MESSAGE", f"sip:bob@{DOMAIN}", via=ua.hostport(), from_uri=ALICE, call_id=call_id,
                                   body="hi", content_type="text/plain"), ua))


async def test_finding10_trusted_flow_ends_with_its_binding(tmp_path: Path) -> None:
    """Finding 10b, auth.trust_registered_flows. alice's phone registers (authenticated) and its
    flow is trusted: 'MESSAGE sip:bob@example.com / From: alice' goes through unchallenged. Then

        REGISTER sip:example.com SIP/2.0
        Contact: <sip:alice@A>
        Expires: 0                                 (authenticated: 200 OK, binding gone)
    and the same MESSAGE on the same flow -> 407; bob hears only the first."""
    async with scene(tmp_path) as sc:
        phone = await sc.ua(OWN_HOST)
        assert (await register_user(phone, "alice")).status == 200
        assert await _message_to_bob(sc, phone, "trust-1") == (200, "OK")
        assert (await register_user(phone, "alice", expires=0)).status == 200
        assert (await _message_to_bob(sc, phone, "trust-2"))[0] == 407  # type: ignore[index]
        assert sc.bob.heard_call("trust-1") and not sc.bob.heard_call("trust-2")


async def test_finding10_refused_register_does_not_trust_the_flow(tmp_path: Path) -> None:
    """Finding 10c. A REGISTER that authenticates but is refused binds nothing, so its flow is
    not trusted:

        REGISTER sip:example.com SIP/2.0 (alice's Authorization)
        Expires: 1                        ->  423 Interval Too Brief
        REGISTER ... To: <sip:bob@example.com> with alice's Authorization -> 403
    then 'MESSAGE sip:bob@example.com / From: alice' on that flow -> 407; bob hears nothing."""
    async with scene(tmp_path) as sc:
        phone = await sc.ua(OWN_HOST)
        resp = await register_user(phone, "alice", expires=1)
        assert resp.status == 423, (resp.status, resp.reason)
        assert (await _message_to_bob(sc, phone, "brief"))[0] == 407  # type: ignore[index]
        # authenticated as alice, registering bob's AoR: refused
        call_id = "reg-mismatch"
        text = sip("REGISTER", f"sip:{DOMAIN}", via=phone.hostport(), from_uri=ALICE, to_uri=f"sip:bob@{DOMAIN}",
                   call_id=call_id, contact=f"<sip:bob@{phone.hostport()}>", extra=["Expires: 600"])
        got = await exchange(phone, text)
        assert got[-1].status == 401
        text = sip("REGISTER", f"sip:{DOMAIN}", via=phone.hostport(), from_uri=ALICE, to_uri=f"sip:bob@{DOMAIN}",
                   call_id=call_id, cseq=2, contact=f"<sip:bob@{phone.hostport()}>",
                   extra=["Expires: 600", sc.creds("alice", "REGISTER", f"sip:{DOMAIN}", "Authorization")])
        got = await exchange(phone, text)
        assert got[-1].status == 403, (got[-1].status, got[-1].reason)
        assert (await _message_to_bob(sc, phone, "mismatch"))[0] == 407  # type: ignore[index]
        assert not sc.bob.heard_call("brief") and not sc.bob.heard_call("mismatch")


# ============================================================================ beyond the list
async def test_registered_contact_elsewhere_is_no_relay(tmp_path: Path, victim: Victim) -> None:
    """alice (authenticated) registers the victim as her contacts, posing as a proxy's client:

        REGISTER sip:example.com SIP/2.0
        Via: SIP/2.0/UDP A;branch=..;rport
        Via: SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKfake
        Contact: <sip:alice@V>, <sip:alice@VT;transport=tcp>
    ->  200 OK (no Path, no flow: the Contacts themselves are the targets)

    then a stranger: INVITE sip:alice@example.com (foreign From, no credentials)
    expected  the victim hears nothing (480, or 403 at registration)
    was       the victim gets the INVITE over UDP (retransmitted) and a TCP connection."""
    async with scene(tmp_path) as sc:
        phone = await sc.ua(OWN_HOST)
        fake = ["Via: SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKfake"]
        resp = await register_user(phone, "alice", contact_host=victim.udp_hostport, extra=fake)
        await register_user(phone, "alice", contact_host=f"{victim.tcp_hostport};transport=tcp", extra=fake)
        await sc.attacker.send(sip("INVITE", f"sip:alice@{DOMAIN}", via=sc.attacker.hostport(), from_uri=MALLORY,
                                   call_id="amplify", body=SDP))
        await victim.assert_silent(SILENCE)
        assert resp.status in (200, 403)


async def test_own_realm_credentials_not_forwarded(tmp_path: Path) -> None:
    """alice calls out through the trunk with credentials:

        MESSAGE sip:x@127.0.0.2:P SIP/2.0
        Proxy-Authorization: Digest username="alice", realm="example.com", ..., response=".."
    expected  the trunk's copy carries no Proxy-Authorization for realm example.com
    was       it carries alice's, unchanged."""
    async with scene(tmp_path) as sc:
        ruri = f"sip:x@{sc.relay.hostport}"
        resp = await sc.ask(sip("MESSAGE", ruri, via=sc.attacker.hostport(), from_uri=ALICE, call_id="creds-out",
                                body="hi", content_type="text/plain", extra=[sc.creds("alice", "MESSAGE", ruri)]))
        assert resp is not None and resp.status == 200
        seen = sc.relay.heard_call("creds-out", "MESSAGE")
        assert seen and not [v for v in seen[0].header_lines("proxy-authorization") if 'realm="example.com"' in v]
