"""Digest authentication and abuse resistance on the wire (issue: authentication)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from harness import TcpUA, UdpUA, addr, register, request, response_to, running_server

from sipserver.auth.digest import compute_response, ha1
from sipserver.sip import Response

USERS = {"alice": {"password": "wonderland"}, "bob": {"password": "builder"}}
REALM = "example.com"


def _params(challenge: str) -> dict[str, str]:
    return {k.lower(): v for k, v in re.findall(r'(\w+)="?([^",]+)"?', challenge.split(" ", 1)[1])}


def authorization(resp: Response, user: str, password: str, method: str, uri: str, *, nc: int = 1, algorithm: str | None = None) -> str:
    header = "www-authenticate" if resp.status == 401 else "proxy-authenticate"
    challenges = resp.header_lines(header)
    chosen = challenges[0]
    if algorithm is not None:
        chosen = next(c for c in challenges if f"algorithm={algorithm}" in c)
    p = _params(chosen)
    alg = p.get("algorithm", "MD5")
    h1 = ha1(user, p["realm"], password, alg)
    cnonce = "0a4f113b"
    ncs = f"{nc:08x}"
    response = compute_response(alg, h1, p["nonce"], ncs, cnonce, "auth", method, uri)
    return (
        f'Digest username="{user}", realm="{p["realm"]}", nonce="{p["nonce"]}", uri="{uri}", '
        f'response="{response}", algorithm={alg}, cnonce="{cnonce}", qop=auth, nc={ncs}, opaque="{p.get("opaque", "")}"'
    )


async def test_register_challenge_then_both_algorithms(tmp_path: Path) -> None:
    """401 offers SHA-256 then MD5 (RFC 8760); the right password with either gives 200."""
    async with running_server(tmp_path, users=USERS, auth={"realm": REALM}) as server:
        ua = await UdpUA.open(addr(server, "udp"))
        await ua.send(register(ua, "alice", call_id="a1", contact_host=ua.hostport()))
        ch = await ua.recv_response()
        assert ch.status == 401
        values = ch.header_lines("www-authenticate")
        assert "SHA-256" in values[0] and "MD5" in values[1]
        for n, alg in enumerate(("SHA-256", "MD5"), start=2):
            auth = authorization(ch, "alice", "wonderland", "REGISTER", "sip:example.com", algorithm=alg)
            await ua.send(register(ua, "alice", call_id="a1", cseq=n, contact_host=ua.hostport(), extra=[f"Authorization: {auth}"]))
            resp = await ua.recv_response()
            assert resp.status == 200, resp.reason


async def test_wrong_password_and_unknown_user_look_the_same_then_ban(tmp_path: Path) -> None:
    async with running_server(tmp_path, users=USERS, auth={"realm": REALM, "max_failures": 3}) as server:
        ua = await UdpUA.open(addr(server, "udp"))
        answers = []
        for n, user in enumerate(("alice", "mallory", "alice"), start=1):
            await ua.send(register(ua, user, call_id=f"w{n}", contact_host=ua.hostport()))
            ch = await ua.recv_response()
            auth = authorization(ch, user, "wrong", "REGISTER", "sip:example.com")
            await ua.send(register(ua, user, call_id=f"w{n}", cseq=2, contact_host=ua.hostport(), extra=[f"Authorization: {auth}"]))
            resp = await ua.recv_response()
            answers.append((resp.status, resp.reason))
        assert answers[0] == answers[1] == (401, "Unauthorized")  # scanners learn nothing
        await ua.send(register(ua, "alice", call_id="w9", contact_host=ua.hostport()))
        banned = await ua.recv_response()
        assert banned.status == 403 and "failed" in banned.reason
        other = await TcpUA.open(addr(server, "tcp"))  # same IP: also banned; ban is per source
        await other.send(register(other, "bob", call_id="w10", contact_host=other.hostport()))
        assert (await other.recv_response()).status == 403


async def test_invite_from_registered_flow_passes_forged_from_refused(tmp_path: Path) -> None:
    async with running_server(tmp_path, users=USERS, auth={"realm": REALM}) as server:
        bob = await TcpUA.open(addr(server, "tcp"))
        await bob.send(register(bob, "bob", call_id="b1", contact_host="10.9.9.9:5060", instance="urn:uuid:b0b", reg_id=1))
        ch = await bob.recv_response()
        auth = authorization(ch, "bob", "builder", "REGISTER", "sip:example.com")
        await bob.send(register(bob, "bob", call_id="b1", cseq=2, contact_host="10.9.9.9:5060", instance="urn:uuid:b0b", reg_id=1,
                                extra=[f"Authorization: {auth}"]))
        assert (await bob.recv_response()).status == 200
        alice = await TcpUA.open(addr(server, "tcp"))
        await alice.send(register(alice, "alice", call_id="al", contact_host="10.9.9.8:5060", instance="urn:uuid:a1", reg_id=1))
        ch = await alice.recv_response()
        auth = authorization(ch, "alice", "wonderland", "REGISTER", "sip:example.com")
        await alice.send(register(alice, "alice", call_id="al", cseq=2, contact_host="10.9.9.8:5060", instance="urn:uuid:a1", reg_id=1,
                                  extra=[f"Authorization: {auth}"]))
        assert (await alice.recv_response()).status == 200
        # alice's registered flow is proof of identity: her MESSAGE goes through unchallenged
        await alice.send(request(alice, "MESSAGE", "sip:bob@example.com", from_user="alice", body="hi"))
        m = await bob.recv_request()
        await bob.send(response_to(m, 200, "OK", to_tag="x"))
        assert (await alice.recv_response()).status == 200
        # ...but not as somebody else
        await alice.send(request(alice, "MESSAGE", "sip:bob@example.com", from_user="carol", body="forged"))
        assert (await alice.recv_response()).status == 403
        # an unregistered flow claiming alice is challenged
        stranger = await UdpUA.open(addr(server, "udp"))
        await stranger.send(request(stranger, "MESSAGE", "sip:bob@example.com", from_user="alice", body="x"))
        assert (await stranger.recv_response()).status == 407


async def test_foreign_domain_refused_with_auth(tmp_path: Path) -> None:
    async with running_server(tmp_path, users=USERS, auth={"realm": REALM}) as server:
        ua = await UdpUA.open(addr(server, "udp"))
        await ua.send(request(ua, "INVITE", "sip:x@foreign.example.org", from_user="eve", domain="foreign.example.org"))
        resp = await ua.recv_response()
        assert resp.status == 403


async def test_rate_limit_per_source(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A flood from one source is refused with 503 + Retry-After while another source is served;
    the reason phrase and one WARNING name the setting to change (issue 16)."""
    caplog.set_level(logging.WARNING, logger="sipserver")
    async with running_server(tmp_path, rate_limit={"enabled": True, "requests_per_second": 5, "burst": 5}) as server:
        ua = await UdpUA.open(addr(server, "udp"))
        statuses = []
        for _ in range(12):
            await ua.send(request(ua, "OPTIONS", "sip:example.com"))
            statuses.append((await ua.recv_response()).status)
        assert statuses[:5] == [200] * 5
        assert 503 in statuses
        assert server.stats.get("rate_limited", 0) >= 1
        limited = next(r for r in ua.received if b" 503 " in r.split(b"\r\n")[0])
        assert b"Retry-After:" in limited
        assert b"rate_limit.requests_per_second" in limited.split(b"\r\n")[0]
        warnings = [r.getMessage() for r in caplog.records if "rate limit:" in r.getMessage()]
        assert len(warnings) == 1 and "127.0.0.1" in warnings[0] and "rate_limit.requests_per_second = 5" in warnings[0]
        other = await UdpUA.open(addr(server, "udp"), local_host="127.0.0.2")  # another source IP
        await other.send(request(other, "OPTIONS", "sip:example.com"))
        assert (await other.recv_response()).status == 200


async def test_header_and_via_count_limits(tmp_path: Path) -> None:
    async with running_server(tmp_path, limits={"max_headers": 20, "max_vias": 4}) as server:
        ua = await UdpUA.open(addr(server, "udp"))
        await ua.send(request(ua, "OPTIONS", "sip:example.com", extra=[f"X-Filler-{i}: {i}" for i in range(30)]))
        raw = await ua.recv_raw()
        assert raw.startswith(b"SIP/2.0 400 ") and b"too many headers" in raw.split(b"\r\n")[0]
        vias = [f"Via: SIP/2.0/UDP 10.0.0.{i}:5060;branch=z9hG4bKv{i}" for i in range(6)]
        await ua.send(request(ua, "OPTIONS", "sip:example.com", extra=vias))
        raw = await ua.recv_raw()
        assert raw.startswith(b"SIP/2.0 400 ") and b"Via" in raw.split(b"\r\n")[0]


def test_sighup_reloads_credentials_file(tmp_path: Path) -> None:
    """`sipserver passwd` writes HA1 entries; SIGHUP makes a running server accept the new user."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    from sipserver.sip import parse_message

    creds = tmp_path / "users.toml"
    exe = [sys.executable, "-m", "sipserver"]
    cfg = tmp_path / "server.toml"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg.write_text(
        f'[server]\nlisten = ["udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}"]\ndata_dir = "{tmp_path / "data"}"\n'
        f'domains = ["example.com"]\n[auth]\nenabled = true\nrealm = "example.com"\ncredentials_file = "{creds}"\n'
    )
    subprocess.run([*exe, "passwd", "dave", "-c", str(cfg), "--password-stdin"], input=b"first\n", check=True, timeout=30)
    assert "first" not in creds.read_text()  # HA1 only, never the clear password
    proc = subprocess.Popen([*exe, "run", "-c", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)

        def try_register(password: str, n: int) -> int:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.bind(("127.0.0.1", 0))
                ua = type("UA", (), {"hostport": lambda self: f"127.0.0.1:{s.getsockname()[1]}", "transport": "udp", "via_transport": "UDP"})()
                s.sendto(register(ua, "dave", call_id=f"h{n}").encode(), ("127.0.0.1", port))
                ch = parse_message(s.recvfrom(65536)[0])
                auth = authorization(ch, "dave", password, "REGISTER", "sip:example.com")  # type: ignore[arg-type]
                s.sendto(register(ua, "dave", call_id=f"h{n}", cseq=2, extra=[f"Authorization: {auth}"]).encode(), ("127.0.0.1", port))
                return parse_message(s.recvfrom(65536)[0]).status  # type: ignore[attr-defined,no-any-return]

        assert try_register("first", 1) == 200
        subprocess.run([*exe, "passwd", "dave", "-c", str(cfg), "--password-stdin"], input=b"second\n", check=True, timeout=30)
        assert try_register("second", 2) == 401  # not reloaded yet
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert try_register("second", 3) == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=15)[0].decode()
    assert proc.returncode == 0, out
    assert "credentials reloaded" in out
    assert "second" not in out and "first" not in out  # passwords never logged
