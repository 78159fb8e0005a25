"""Issue 17 on real networks: phones behind a Linux NAT (iptables MASQUERADE in a namespace, UDP
mappings forgotten after NAT_TIMEOUT idle seconds) and a server behind a 1:1 NAT.

Timings are scaled down from the field (a consumer NAT forgets a UDP mapping after ~30 s, a
phone may stay silent for minutes): the NAT forgets after 10 s, the phones stay silent for 25 s,
the server pings every 5 s. The control scenario proves the NAT really forgets: the same
silence without the server's keepalives loses the phone. Every scenario runs in its own
namespaces with its own server, all at once (conftest.py), so the module takes about one
scenario's time.

Addresses: server side 100.64.0.10, NAT public 100.64.0.1, phone 10.199.0.2 (natlab.PhoneLab);
the server has no route to 10.199/16, so only the NAT mapping leads to a phone.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from natbaresip import Baresip, find_baresip
from natlab import NAT_PUBLIC_IP, PHONE_IP, SRV_IP, Lab, PhoneLab, ServerNatLab, ServerProc, in_ci
from natsip import UA, Msg, StreamChannel, UdpChannel, WsChannel, param, uri_of, xor_mapped_address

NAT_TIMEOUT = 10          # conntrack UDP timeout in the phone's NAT (field: ~30 s)
SILENCE = 25              # how long a phone says nothing (field: 75 s)
KEEPALIVE_INTERVAL = 5    # server's nat.keepalive_interval, below NAT_TIMEOUT (field: 25 s)
NOTHING_WAIT = 5          # how long "does not arrive" waits


# ----------------------------------------------------------------------------------------------
# helpers

def toml(**sections: dict[str, Any]) -> str:
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        for key, value in values.items():
            text = str(value).lower() if isinstance(value, bool) else f'"{value}"' if isinstance(value, str) else str(value)
            out.append(f"{key} = {text}")
    return "\n".join(out) + "\n"


def start_server(lab: PhoneLab, tmp: Path, **sections: dict[str, Any]) -> ServerProc:
    return ServerProc(lab.srv, tmp / "server", [f"udp:{SRV_IP}:5060", f"tcp:{SRV_IP}:5060", f"ws:{SRV_IP}:5066"],
                      config=toml(**sections), wait_tcp=(SRV_IP, 5060))


def phone_udp(lab: PhoneLab, name: str, user: str, port: int = 5060, **kw: Any) -> UA:
    """A UDP phone on the private LAN, behind the NAT."""
    sock = lab.phone.socket()
    sock.bind((PHONE_IP, port))
    return UA(name, user, UdpChannel(sock, (SRV_IP, 5060)), f"{PHONE_IP}:{port}", **kw)


def phone_tcp(lab: PhoneLab, name: str, user: str) -> UA:
    sock = lab.phone.socket(kind=socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect((SRV_IP, 5060))
    return UA(name, user, StreamChannel(sock), f"{PHONE_IP}:{sock.getsockname()[1]}")


def srv_side_udp(lab: PhoneLab, name: str, user: str) -> UA:
    """A UA on the server's side of the NAT (not NATed)."""
    sock = lab.srv.socket()
    sock.bind((SRV_IP, 0))
    return UA(name, user, UdpChannel(sock, (SRV_IP, 5060)), f"{SRV_IP}:{sock.getsockname()[1]}")


def nat_mapping(lab: PhoneLab, port: int, proto: str = "udp") -> int | None:
    """The public port the NAT maps PHONE_IP:port to, or None when it has no mapping."""
    for line in lab.nat.conntrack("-p", proto).splitlines():
        srcs, sports, dports = re.findall(r"src=(\S+)", line), re.findall(r"sport=(\d+)", line), re.findall(r"dport=(\d+)", line)
        if len(srcs) == 2 and len(dports) == 2 and srcs[0] == PHONE_IP and int(sports[0]) == port:
            return int(dports[1])
    return None


def assert_behind_nat(lab: PhoneLab, ok: Msg, port: int) -> int:
    """The server saw the phone at the NAT's public address (Via received/rport, RFC 3581), on
    the mapping the router holds; returns the public port."""
    via = ok.all("via")[0]
    public = nat_mapping(lab, port)
    assert param(via, "received") == NAT_PUBLIC_IP, f"REGISTER not NATed? Via: {via}"
    assert public is not None and param(via, "rport") == str(public), \
        f"Via {via} vs NAT mapping {public}:\n{lab.udp_mappings()}"
    return public


def silence(seconds: float) -> tuple[float, float]:
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()


def assert_quiet(ua: UA, start: float, end: float, min_pings: int) -> None:
    """Between start and end the phone sent nothing but 200s to OPTIONS, and received at least
    min_pings keepalive OPTIONS (and nothing else)."""
    events = ua.events_between(start, end)
    spoke = [e.first for e in events if e.direction == "out"
             and not (e.msg is not None and not e.msg.is_request and e.msg.cseq[1] == "OPTIONS")]
    heard = [e.first for e in events if e.direction == "in" and not (e.msg is not None and e.msg.method == "OPTIONS")]
    pings = [e for e in events if e.direction == "in" and e.msg is not None and e.msg.is_request and e.msg.method == "OPTIONS"]
    assert not spoke, f"{ua.name} was not silent: sent {spoke}"
    assert not heard, f"{ua.name} received more than keepalives during the silence: {heard}"
    assert len(pings) >= min_pings, \
        f"{ua.name}: {len(pings)} keepalive OPTIONS in {end - start:.0f} s, expected at least {min_pings}"


def assert_silent(ua: UA, start: float, end: float) -> None:
    events = ua.events_between(start, end)
    assert not events, f"{ua.name}: expected no traffic at all, got {[e.first for e in events]}"


@contextmanager
def explained(server: ServerProc | None, uas: list[UA], lab: Lab | None = None) -> Iterator[None]:
    """On an assertion failure, add the UAs' transcripts, the server log and the NAT table."""
    try:
        yield
    except AssertionError as exc:
        parts = [str(exc), "--- transcripts (seconds since each UA started)"]
        parts += [ua.transcript() for ua in uas]
        if isinstance(lab, PhoneLab):
            parts.append(f"--- NAT conntrack (udp):\n{lab.udp_mappings()}")
        if server is not None:
            parts.append(f"--- server log (tail):\n{server.tail(80)}")
        raise AssertionError("\n".join(parts)) from None


def call(caller: UA, callee: UA, target: str | None = None) -> tuple[Any, Any, Msg]:
    """caller INVITEs callee through the server; callee answers 200; caller ACKs. Returns the
    caller's dialog, the callee's dialog and the INVITE as the callee received it."""
    pending = caller.send_invite(target or callee.aor)
    invite = callee.expect_request("INVITE", 5, pending.call_id)
    callee_dialog = callee.answer(invite)
    caller_dialog, final = caller.complete_invite(pending)
    assert final.status == 200, f"{caller.name}: INVITE got {final.first}"
    callee.expect_request("ACK", 5, pending.call_id)
    return caller_dialog, callee_dialog, invite


# ----------------------------------------------------------------------------------------------
# 1. UDP phone without outbound: INVITE after the silence, and the caller's BYE later


def scenario_udp_invite(tmp: Path) -> None:
    with PhoneLab("uinv", NAT_TIMEOUT) as lab:
        server = start_server(lab, tmp, nat={"keepalive_interval": KEEPALIVE_INTERVAL})
        uas: list[UA] = []
        with explained(server, uas, lab):
            phone = phone_udp(lab, "phone", "alice")
            caller = srv_side_udp(lab, "caller", "bob")
            uas += [phone, caller]
            public = assert_behind_nat(lab, phone.register(), 5060)
            caller.register()

            start, end = silence(SILENCE)
            assert_quiet(phone, start, end, min_pings=SILENCE // KEEPALIVE_INTERVAL - 1)
            assert nat_mapping(lab, 5060) == public, "the NAT mapping of the REGISTER is not the one kept open"

            caller_dialog, _, invite = call(caller, phone)
            assert invite.uri == f"sip:alice@{PHONE_IP}:5060", "Request-URI must be the stored (private) Contact"

            start, end = silence(NAT_TIMEOUT + 3)
            assert_quiet(phone, start, end, min_pings=1)
            final = caller.bye(caller_dialog)
            assert final.status == 200, f"caller's BYE got {final.first}"
            bye = phone.expect_request("BYE", 1, caller_dialog.call_id)
            assert bye.uri == f"sip:alice@{PHONE_IP}:5060"


@pytest.mark.nat_scenario("udp_invite")
def test_udp_phone_without_outbound_gets_invite_and_bye_after_silence(nat_scenarios: Any, request: Any) -> None:
    """A UDP phone without outbound registers through the NAT and stays silent for 2.5 NAT
    timeouts, answering only the server's keepalive OPTIONS; the mapping its REGISTER created
    is still the one in use, the INVITE reaches it (Request-URI = its private Contact), and so
    does the caller's BYE after another silence longer than the NAT timeout."""
    nat_scenarios.check(request)


# ----------------------------------------------------------------------------------------------
# 2. the same phone as caller: the callee's BYE after the silence


def scenario_udp_callee_bye(tmp: Path) -> None:
    with PhoneLab("ubye", NAT_TIMEOUT) as lab:
        server = start_server(lab, tmp, nat={"keepalive_interval": KEEPALIVE_INTERVAL})
        uas: list[UA] = []
        with explained(server, uas, lab):
            phone = phone_udp(lab, "phone", "alice")
            callee = srv_side_udp(lab, "callee", "bob")
            uas += [phone, callee]
            public = assert_behind_nat(lab, phone.register(), 5060)
            callee.register()
            _, callee_dialog, invite = call(phone, callee)
            rr = invite.all("record-route")
            assert rr and all(f"@{SRV_IP}:5060" in v for v in rr), f"Record-Route: {rr}"

            start, end = silence(SILENCE)
            assert_quiet(phone, start, end, min_pings=SILENCE // KEEPALIVE_INTERVAL - 1)
            assert nat_mapping(lab, 5060) == public

            final = callee.bye(callee_dialog)
            assert final.status == 200, f"callee's BYE got {final.first}"
            bye = phone.expect_request("BYE", 1, callee_dialog.call_id)
            assert bye.uri == f"sip:alice@{PHONE_IP}:5060"


@pytest.mark.nat_scenario("udp_callee_bye")
def test_udp_phone_without_outbound_as_caller_gets_callee_bye_after_silence(nat_scenarios: Any, request: Any) -> None:
    """The NATed phone calls a UA on the server's side; after 2.5 NAT timeouts of silence the
    callee's BYE (routed by the Record-Route that carries the caller's flow token) reaches the
    phone down the mapping its REGISTER opened and the keepalives kept."""
    nat_scenarios.check(request)


# ----------------------------------------------------------------------------------------------
# 3. TCP phone without outbound


def scenario_tcp_invite(tmp: Path) -> None:
    with PhoneLab("tinv", NAT_TIMEOUT) as lab:
        server = start_server(lab, tmp, nat={"keepalive_interval": KEEPALIVE_INTERVAL})
        uas: list[UA] = []
        with explained(server, uas, lab):
            phone = phone_tcp(lab, "tcp-phone", "carol")
            caller = srv_side_udp(lab, "caller", "bob")
            uas += [phone, caller]
            ok = phone.register()
            assert param(ok.all("via")[0], "received") == NAT_PUBLIC_IP, ok.all("via")
            caller.register()

            start, end = silence(SILENCE)
            assert_silent(phone, start, end)  # no keepalives on TCP: the connection holds the NAT state

            caller_dialog, _, invite = call(caller, phone)
            assert invite.uri == f"sip:carol@{phone.contact_host};transport=tcp", invite.uri
            assert invite.all("via")[0].startswith(f"SIP/2.0/TCP {SRV_IP}:5060"), invite.all("via")
            final = caller.bye(caller_dialog)
            assert final.status == 200, f"caller's BYE got {final.first}"
            phone.expect_request("BYE", 1, caller_dialog.call_id)


@pytest.mark.nat_scenario("tcp_invite")
def test_tcp_phone_without_outbound_gets_invite_over_its_connection_after_silence(nat_scenarios: Any, request: Any) -> None:
    """A TCP phone without outbound registers through the NAT over the connection it opened
    and sends nothing for 25 s (the server sends nothing either); the INVITE comes down that
    connection (the server has no route to the phone's Contact), and so does the BYE."""
    nat_scenarios.check(request)


# ----------------------------------------------------------------------------------------------
# control: without the server's keepalives the NAT forgets the phone


def scenario_control_no_keepalive(tmp: Path) -> None:
    with PhoneLab("ctl", NAT_TIMEOUT) as lab:
        server = start_server(lab, tmp, nat={"keepalive": False})
        uas: list[UA] = []
        with explained(server, uas, lab):
            phone = phone_udp(lab, "phone", "alice")
            caller = srv_side_udp(lab, "caller", "bob")
            uas += [phone, caller]
            assert_behind_nat(lab, phone.register(), 5060)
            caller.register()

            # While the mapping is fresh the phone is reachable: routing is not what fails later.
            pending = caller.send_invite(phone.aor)
            phone.answer(phone.expect_request("INVITE", 5, pending.call_id), 486, "Busy Here")
            _, final = caller.complete_invite(pending)
            assert final.status == 486, final.first
            phone.expect_request("ACK", 5, pending.call_id)  # the server's hop-by-hop ACK

            start, end = silence(SILENCE)
            assert_silent(phone, start, end)
            assert nat_mapping(lab, 5060) is None, f"the NAT still maps the phone:\n{lab.udp_mappings()}"

            pending = caller.send_invite(phone.aor)
            lost = phone.poll(lambda m: m.is_request and m.call_id == pending.call_id, NOTHING_WAIT)
            assert lost is None, "the INVITE reached the phone although the NAT had forgotten it"


@pytest.mark.nat_scenario("control_no_keepalive")
def test_control_without_server_keepalives_the_nat_forgets_the_phone(nat_scenarios: Any, request: Any) -> None:
    """CONTROL for the tests above: the same topology and silence with `[nat] keepalive =
    false`. Right after registering the phone is reachable; after the silence the NAT has no
    mapping for it any more and the INVITE does not arrive. So the tests above can fail, and
    pass because of the keepalive OPTIONS."""
    nat_scenarios.check(request)


# ----------------------------------------------------------------------------------------------
# 4. outbound UDP phones keeping their own flows at the Flow-Timer


OB_NAT_TIMEOUT = 15
OB_FLOW_TIMER = 10  # registrar.flow_timer_udp (its minimum)


def scenario_outbound_udp(tmp: Path) -> None:
    with PhoneLab("ob", OB_NAT_TIMEOUT) as lab:
        server = start_server(lab, tmp, registrar={"flow_timer_udp": OB_FLOW_TIMER},
                              nat={"keepalive_interval": KEEPALIVE_INTERVAL})
        uas: list[UA] = []
        stop = threading.Event()
        with explained(server, uas, lab):
            try:
                stun = phone_udp(lab, "stun-phone", "alice", 5060)
                crlf = phone_udp(lab, "crlf-phone", "carol", 5062)
                lazy = phone_udp(lab, "lazy-phone", "dave", 5064)  # outbound, sends no keepalives
                caller = srv_side_udp(lab, "caller", "bob")
                uas += [stun, crlf, lazy, caller]
                oks = {}
                for ua in (stun, crlf, lazy):
                    ok = ua.register(outbound=True, instance=str(uuid.uuid4()), reg_id=1)
                    required = [v.lower() for v in ok.all("require")]
                    assert "outbound" in required, f"{ua.name}: 200 without Require: outbound\n{ok.text}"
                    assert ok.get("flow-timer") == str(OB_FLOW_TIMER), f"{ua.name}: Flow-Timer {ok.get('flow-timer')}"
                    oks[ua.name] = ok
                caller.register()
                public = assert_behind_nat(lab, oks["stun-phone"], 5060)
                for ua, kind in ((stun, "stun"), (crlf, "crlf")):
                    ua.keep_alive(kind, float(oks[ua.name].get("flow-timer") or 0), stop)

                start, end = silence(SILENCE)
                # The lazy phone first: its binding lives until Flow-Timer + keepalive_grace.
                lost = caller.send_invite(lazy.aor)

                stun_sent = [e for e in stun.events_between(start, end) if e.direction == "out"]
                answers = [e for e in stun.events_between(start, end) if e.kind == "stun" and e.direction == "in"]
                assert len(stun_sent) >= 2 and all(e.kind == "stun" for e in stun_sent), [e.first for e in stun_sent]
                assert len(answers) >= len(stun_sent) - 1, f"STUN answers {len(answers)} for {len(stun_sent)} requests"
                assert xor_mapped_address(answers[-1].data) == (NAT_PUBLIC_IP, public), \
                    f"XOR-MAPPED-ADDRESS {xor_mapped_address(answers[-1].data)} is not the NAT mapping {public}"
                # CRLFCRLF over UDP gets no pong (RFC 5626 §4.4.1 defines it for connections);
                # going out through the NAT is what keeps the mapping.
                crlf_sent = [e for e in crlf.events_between(start, end) if e.direction == "out"]
                assert len(crlf_sent) >= 2 and all(e.kind == "crlf" for e in crlf_sent), [e.first for e in crlf_sent]
                for ua in (stun, crlf, lazy):
                    options = [e for e in ua.events if e.msg is not None and e.msg.method == "OPTIONS"]
                    assert not options, f"{ua.name}: server keepalive OPTIONS sent to an outbound flow"

                for ua in (stun, crlf):
                    caller_dialog, _, invite = call(caller, ua)
                    assert invite.uri == f"sip:{ua.user}@{ua.contact_host};ob", invite.uri
                    assert caller.bye(caller_dialog).status == 200

                assert nat_mapping(lab, 5064) is None, f"the NAT still maps the lazy phone:\n{lab.udp_mappings()}"
                arrived = lazy.poll(lambda m: m.is_request and m.call_id == lost.call_id, NOTHING_WAIT)
                assert arrived is None, "control: the INVITE reached the phone that sent no keepalives"
            finally:
                stop.set()


@pytest.mark.nat_scenario("outbound_udp")
def test_outbound_udp_phones_keep_their_flows_at_the_flow_timer(nat_scenarios: Any, request: Any) -> None:
    """RFC 5626 over UDP behind a NAT that forgets after 15 s: with registrar.flow_timer_udp =
    10 the 200 carries Require: outbound and Flow-Timer: 10; one phone sends STUN Binding
    requests (answered with XOR-MAPPED-ADDRESS = its NAT mapping), one CRLFCRLF (answered with
    CRLF), each at 80-100 % of the Flow-Timer, and both get an INVITE after 25 s. The server
    sends no keepalive OPTIONS to outbound flows. Control: a third outbound phone that sends no
    keepalives is forgotten by the NAT and its INVITE does not arrive."""
    nat_scenarios.check(request)


# ----------------------------------------------------------------------------------------------
# 5. the server behind a 1:1 NAT, advertising its public address


PUB_SIP_PORT, PRIV_SIP_PORT = 5080, 5060
PUB_WS_PORT, PRIV_WS_PORT = 8080, 5066


def hop_address(value: str, header: str) -> tuple[str, str, int]:
    """(transport, host, port) of a Via sent-by or a Record-Route/Path/Route URI."""
    if header == "via":
        proto, _, rest = value.partition(" ")
        hostport = rest.split(";", 1)[0].strip()
        transport = proto.rsplit("/", 1)[-1].lower()
    else:
        uri = uri_of(value)
        hostport = uri.split("@", 1)[-1].split(";", 1)[0]
        transport = (param(";" + uri.split(";", 1)[1], "transport") if ";" in uri else None) or "udp"
    host, colon, port = hostport.rpartition(":")
    if not colon:
        return transport.lower(), hostport, 5060
    return transport.lower(), host, int(port)


def scenario_server_behind_nat(tmp: Path) -> None:
    L = ServerNatLab
    ports = [("udp", PUB_SIP_PORT, PRIV_SIP_PORT), ("tcp", PUB_SIP_PORT, PRIV_SIP_PORT), ("tcp", PUB_WS_PORT, PRIV_WS_PORT)]
    with L("snat", ports) as lab:
        pub = f"{L.PUBLIC_IP}:{PUB_SIP_PORT}"
        listen = [f"udp:{L.PRIVATE_IP}:{PRIV_SIP_PORT};advertise={pub}",
                  f"tcp:{L.PRIVATE_IP}:{PRIV_SIP_PORT};advertise={pub}",
                  f"ws:{L.PRIVATE_IP}:{PRIV_WS_PORT};advertise={L.PUBLIC_IP}:{PUB_WS_PORT}"]
        server = ServerProc(lab.srv, tmp / "server", listen, config=toml(nat={"keepalive_interval": 2}),
                            wait_tcp=(L.PRIVATE_IP, PRIV_SIP_PORT))
        uas: list[UA] = []
        with explained(server, uas, lab):
            def client(name: str, user: str, transport: str) -> UA:
                if transport == "udp":
                    sock = lab.client.socket()
                    sock.bind((L.CLIENT_IP, 0))
                    ua = UA(name, user, UdpChannel(sock, (L.PUBLIC_IP, PUB_SIP_PORT)),
                            f"{L.CLIENT_IP}:{sock.getsockname()[1]}")
                else:
                    sock = lab.client.socket(kind=socket.SOCK_STREAM)
                    sock.settimeout(5)
                    if transport == "tcp":
                        sock.connect((L.PUBLIC_IP, PUB_SIP_PORT))
                        ua = UA(name, user, StreamChannel(sock), f"{L.CLIENT_IP}:{sock.getsockname()[1]}")
                    else:
                        sock.connect((L.PUBLIC_IP, PUB_WS_PORT))
                        ua = UA(name, user, WsChannel(sock, f"{L.PUBLIC_IP}:{PUB_WS_PORT}"),
                                f"{uuid.uuid4().hex[:12]}.invalid")
                uas.append(ua)
                return ua

            callees: dict[str, UA] = {}
            for transport in ("udp", "tcp", "ws"):
                caller = client(f"{transport}-caller", f"a{transport}", transport)
                callee = client(f"{transport}-callee", f"b{transport}", transport)
                callees[transport] = callee
                ok = callee.register(outbound=True, instance=str(uuid.uuid4()), reg_id=1)
                assert ok.all("path"), f"{transport}: outbound 200 without Path:\n{ok.text}"
                caller.register()
                caller_dialog, _, invite = call(caller, callee)
                assert len(invite.all("via")) == 2 and invite.all("record-route"), invite.text
                assert caller.bye(caller_dialog).status == 200
                callee.expect_request("BYE", 1, caller_dialog.call_id)
                if transport == "udp":  # a keepalive OPTIONS from the server carries its Via too
                    caller.wait_event(lambda e: e.msg is not None and e.msg.method == "OPTIONS", 5, "keepalive OPTIONS")
            # Across transports: the INVITE carries one Record-Route per listener.
            _, _, invite = call(uas[0], callees["ws"])
            assert len(invite.all("record-route")) == 2, invite.text

            checked = 0
            for ua in uas:
                for msg in ua.messages_in():
                    assert L.PRIVATE_IP not in msg.text and "10.199." not in msg.text, \
                        f"{ua.name} received the server's private address:\n{msg.text}"
                    for header in ("via", "record-route", "path"):
                        for value in msg.all(header):
                            transport, host, port = hop_address(value, header)
                            if header == "via" and (host == L.CLIENT_IP or host.endswith(".invalid")):
                                continue  # a client's own Via
                            expected = PUB_WS_PORT if transport in ("ws", "wss") else PUB_SIP_PORT
                            assert (host, port) == (L.PUBLIC_IP, expected), \
                                f"{ua.name}: {header} {value} is not the advertised {L.PUBLIC_IP}:{expected}\n{msg.text}"
                            checked += 1
            assert checked >= 20, f"only {checked} Via/Record-Route/Path values written by the server were seen"


@pytest.mark.nat_scenario("server_behind_nat")
def test_server_behind_1to1_nat_writes_only_its_public_address(nat_scenarios: Any, request: Any) -> None:
    """The server listens on a private address behind a 1:1 NAT (DNAT/SNAT, public ports
    differing from private ones) with `;advertise=PUBLIC:PORT` on UDP, TCP and WS. Clients on
    the public side register (outbound: 200 with Path; plain), call, ACK and BYE over each
    transport and across transports, and get keepalive OPTIONS: every Via, Record-Route and
    Path the server wrote carries the advertised address and port of its listener, the server
    takes in-dialog requests whose Route names that address as its own (ACK and BYE get
    through), and the private address appears in no message the clients received. (Without
    `;advertise` the same scenario fails: Record-Route and Via name 10.199.1.2.)"""
    nat_scenarios.check(request)


# ----------------------------------------------------------------------------------------------
# 6. interop: baresip without outbound behind the NAT


def scenario_baresip(tmp: Path) -> None:
    found = find_baresip()
    if isinstance(found, str):
        if in_ci():
            pytest.fail(f"interop tool missing in CI: {found}")
        pytest.skip(found)
    with PhoneLab("bare", NAT_TIMEOUT) as lab:
        server = start_server(lab, tmp, nat={"keepalive_interval": KEEPALIVE_INTERVAL})
        carol = Baresip(lab.phone, tmp, "carol", PHONE_IP, 5060)  # behind the NAT
        dave = Baresip(lab.srv, tmp, "dave", SRV_IP, 5070)        # outside it

        def fail(why: str) -> AssertionError:
            carol.stop()
            dave.stop()
            return AssertionError(f"{why}\n--- carol events {carol.event_types()}\n--- carol output:\n"
                                  f"{carol.output()[-6000:]}\n--- dave events {dave.event_types()}\n"
                                  f"--- NAT conntrack:\n{lab.udp_mappings()}\n--- server log:\n{server.tail(60)}")

        for ua in (carol, dave):
            event = ua.register(f'<sip:{ua.name}@example.com;transport=udp>;outbound="sip:{SRV_IP}:5060;transport=udp"'
                                ";regint=3600;answermode=auto;audio_codecs=PCMU")
            if event.get("type") != "REGISTER_OK":
                raise fail(f"{ua.name}: {event}")
        registered = time.monotonic()
        time.sleep(max(0.0, registered + SILENCE - time.monotonic()))
        mapped = nat_mapping(lab, 5060)
        try:
            c0, d0 = carol.mark(), dave.mark()
            dave.command("dial", "sip:carol@example.com")
            carol.wait_event({"CALL_ESTABLISHED"}, 10, c0)
            dave.wait_event({"CALL_ESTABLISHED"}, 10, d0)
            c1 = carol.mark()
            dave.command("hangup")
            carol.wait_event({"CALL_CLOSED"}, 10, c1)
        except AssertionError as exc:
            raise fail(str(exc)) from None
        carol.stop()
        dave.stop()

        trace = carol.trace()
        first_ok = next((i for i, e in enumerate(trace) if e.first_line.startswith("SIP/2.0 200")
                         and "REGISTER" in " ".join(e.header("CSeq"))), None)
        invite = next((i for i, e in enumerate(trace) if e.first_line.startswith("INVITE ")), None)
        if first_ok is None or invite is None or mapped is None:
            raise fail(f"carol's trace has no REGISTER 200 / INVITE, or the NAT lost her (mapping {mapped}): {trace}")
        between = trace[first_ok + 1:invite]
        sent = [e for e in between if e.src == f"{PHONE_IP}:5060"]
        if any(not (e.first_line.startswith("SIP/2.0 200") and "OPTIONS" in " ".join(e.header("CSeq"))) for e in sent):
            raise fail(f"carol was not silent between registering and the INVITE: {sent}")
        pings = [e for e in between if e.first_line.startswith("OPTIONS ")]
        if len(pings) < SILENCE // KEEPALIVE_INTERVAL - 1:
            raise fail(f"carol got {len(pings)} keepalive OPTIONS in {SILENCE} s")
        if not any(e.first_line.startswith("BYE ") for e in trace[invite:]):
            raise fail("dave's BYE did not reach carol")


@pytest.mark.interop
@pytest.mark.nat_scenario("baresip")
def test_baresip_without_outbound_behind_nat_receives_call_after_nat_timeout(nat_scenarios: Any, request: Any) -> None:
    """baresip (sipnat off: no outbound) registers over UDP from behind the NAT, says nothing
    for 25 s but its 200s to the server's keepalive OPTIONS (at least four of them), and a
    second baresip outside the NAT then calls it: the call is established on both sides and
    the caller's BYE reaches it. The NAT forgets idle UDP after 10 s."""
    nat_scenarios.check(request)


# ----------------------------------------------------------------------------------------------
# restart: the keepalives resume after a SIGKILL


def scenario_restart(tmp: Path) -> None:
    with PhoneLab("rst", NAT_TIMEOUT) as lab:
        server = start_server(lab, tmp, nat={"keepalive_interval": KEEPALIVE_INTERVAL})
        uas: list[UA] = []
        with explained(server, uas, lab):
            phone = phone_udp(lab, "phone", "alice")
            caller = srv_side_udp(lab, "caller", "bob")
            uas += [phone, caller]
            public = assert_behind_nat(lab, phone.register(), 5060)
            caller.register()
            time.sleep(1)  # the registration is committed before its 200; a moment for the log
            server.proc.kill()
            server.proc.wait()
            server = start_server(lab, tmp, nat={"keepalive_interval": KEEPALIVE_INTERVAL})

            start, end = silence(SILENCE)
            assert_quiet(phone, start, end, min_pings=SILENCE // KEEPALIVE_INTERVAL - 1)
            assert nat_mapping(lab, 5060) == public

            caller_dialog, _, invite = call(caller, phone)
            assert invite.uri == f"sip:alice@{PHONE_IP}:5060"
            assert caller.bye(caller_dialog).status == 200


@pytest.mark.nat_scenario("restart")
def test_udp_phone_behind_nat_stays_reachable_across_a_server_sigkill(nat_scenarios: Any, request: Any) -> None:
    """A UDP phone without outbound registers, the server is SIGKILLed and started again on
    the same data: the restarted server adopts the stored flow and resumes the keepalive
    OPTIONS, so after 25 s of silence the NAT still maps the phone and the INVITE arrives."""
    nat_scenarios.check(request)

