"""Management API, `sipserver ctl`, metrics, tracing and JSON logs against a running server
(issue: operability).

The server runs in-process with its management listener on 127.0.0.1:0; raw UAs make real
registrations, and the tests read them back through HTTP exactly as an operator would."""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio
from harness import (
    TcpUA,
    UdpUA,
    addr,
    autojump_fixture,  # noqa: F401  (the autojump fixture: a MockClock)
    register,
    request,
    response_to,
    running_server,
)
from trio.testing import MockClock
from webphone_files import SIPJS_LIB, WebphoneFiles

from sipserver import __version__, cli

MGMT = {"listen": "127.0.0.1:0"}
INST_A = "urn:uuid:00000000-0000-1000-8000-0000000000aa"
INST_B = "urn:uuid:00000000-0000-1000-8000-0000000000bb"
NAT = "10.255.0.7:5060"  # a Contact address nobody listens on: only the flow reaches the phone
TOKEN = "s3cret-management-token"


# ------------------------------------------------------------------------------ helpers

async def http(
    server: Any,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to the management listener; (status, headers, body)."""
    assert server.mgmt_address is not None
    host, port = server.mgmt_address
    stream = await trio.open_tcp_stream(host, port)
    if raw is None:
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
        if token is not None:
            head += f"Authorization: Bearer {token}\r\n"
        raw = head.encode() + b"\r\n" + data
    with trio.fail_after(5):
        await stream.send_all(raw)
        chunks = []
        while chunk := await stream.receive_some(65536):
            chunks.append(chunk)
    await stream.aclose()
    reply = b"".join(chunks)
    head_bytes, _, payload = reply.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    assert int(headers["content-length"]) == len(payload)
    return status, headers, payload


async def get_json(server: Any, path: str, **kw: Any) -> Any:
    status, headers, payload = await http(server, "GET", path, **kw)
    assert status == 200, payload
    assert headers["content-type"] == "application/json"
    return json.loads(payload)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text 0.0.4 -> {(name, labels): value}; asserts every line is well formed."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram") and name not in typed
            typed.add(name)
            continue
        if line.startswith("# HELP "):
            continue
        m = _SAMPLE.match(line)
        assert m is not None, line
        name, labels, value = m.groups()
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or base in typed, f"sample before its TYPE: {line}"
        out[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
    return out


def metric(values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return values.get((name, frozenset(labels.items())), 0.0)


async def scrape(server: Any, **kw: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, headers, payload = await http(server, "GET", "/metrics", **kw)
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(payload.decode())


async def reg_ok(ua: Any, user: str, **kw: Any) -> None:
    await ua.send(register(ua, user, contact_host=kw.pop("contact_host", NAT), **kw))
    resp = await ua.recv_response()
    assert resp.status == 200, f"{resp.status} {resp.reason}"


async def ctl(capsys: pytest.CaptureFixture[str], server: Any, *argv: str) -> tuple[int, str, str]:
    """`sipserver ctl --mgmt ADDR ARGV...` in a worker thread (the server runs in this one)."""
    capsys.readouterr()
    host, port = server.mgmt_address
    args = ["ctl", "--mgmt", f"{host}:{port}", *argv]
    rc = await trio.to_thread.run_sync(cli.main, args)
    out, err = capsys.readouterr()
    return rc, out, err


async def until(predicate: Any, timeout: float = 3.0) -> None:
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.02)


# ------------------------------------------------------------------------------ listener

async def test_mgmt_is_off_unless_configured(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        assert server.mgmt_address is None


async def test_port_zero_is_resolved_and_info_answers(tmp_path: Path) -> None:
    async with running_server(tmp_path, mgmt=MGMT) as server:
        host, port = server.mgmt_address
        assert host == "127.0.0.1" and port > 0
        info = await get_json(server, "/info")
        assert info["version"] == __version__
        assert info["listeners"] == [str(bl) for bl in server.listeners]
        assert 0 <= info["uptime"] < 60
        assert info["domains"] == ["example.com"] and info["store"] == "memory"
        index = await get_json(server, "/")
        assert "GET /registrations" in index["endpoints"]


async def test_http_errors_are_json_and_never_hurt_the_server(tmp_path: Path) -> None:
    async with running_server(tmp_path, mgmt=MGMT) as server:
        status, _, body = await http(server, "GET", "/nope")
        assert status == 404 and "error" in json.loads(body)
        status, headers, body = await http(server, "PUT", "/flows")
        assert status == 405 and headers["allow"] == "GET"
        status, _, body = await http(server, "GET", "/", raw=b"GARBAGE\r\n\r\n")
        assert status == 400 and json.loads(body)["error"]
        status, _, _ = await http(server, "GET", "/", raw=b"GET / HTTP/2.0\r\n\r\n")
        assert status == 505
        huge = b"GET /info HTTP/1.1\r\nX: " + b"a" * 40000 + b"\r\n\r\n"
        status, _, _ = await http(server, "GET", "/", raw=huge)
        assert status == 431
        chunked = b"POST /trace HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        status, _, _ = await http(server, "GET", "/", raw=chunked)
        assert status == 501
        # A client that connects and goes away without a word.
        stream = await trio.open_tcp_stream(*server.mgmt_address)
        await stream.aclose()
        # The server is still answering SIP and HTTP.
        ua = await UdpUA.open(addr(server, "udp"))
        await ua.send(request(ua, "OPTIONS", "sip:example.com"))
        assert (await ua.recv_response()).status == 200
        assert (await get_json(server, "/info"))["version"] == __version__


async def test_bearer_token_is_required_when_configured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with running_server(tmp_path, mgmt={**MGMT, "token": TOKEN}) as server:
        for path in ("/info", "/metrics", "/nope"):
            status, headers, body = await http(server, "GET", path)
            assert status == 401 and headers["www-authenticate"].startswith("Bearer")
            assert "token" in json.loads(body)["error"]
        status, _, _ = await http(server, "GET", "/info", token="wrong")
        assert status == 401
        status, _, _ = await http(server, "POST", "/registrations/unregister?aor=a@example.com", token="wrong")
        assert status == 401
        assert (await get_json(server, "/info", token=TOKEN))["version"] == __version__
        rc, _, err = await ctl(capsys, server, "info")
        assert rc == 1 and "HTTP 401" in err
        rc, out, _ = await ctl(capsys, server, "--token", TOKEN, "info")
        assert rc == 0 and __version__ in out


# ------------------------------------------------------------------------------ status

async def test_registrations_show_the_outbound_binding(tmp_path: Path) -> None:
    async with running_server(tmp_path, mgmt=MGMT) as server:
        bob = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(bob, "bob", instance=INST_B, reg_id=1, extra=["User-Agent: TestPhone/1.2"])
        data = await get_json(server, "/registrations")
        assert data["count"] == 1
        (reg,) = data["registrations"]
        assert reg["aor"] == "bob@example.com"
        assert reg["contact"] == f"sip:bob@{NAT};transport=tcp;ob"
        assert INST_B in reg["instance"] and reg["reg_id"] == 1 and reg["outbound"] is True
        assert reg["transport"] == "tcp"
        assert reg["source"] == f"127.0.0.1:{bob.local[1]}"
        assert 3500 < reg["expires"] <= 3600
        assert reg["user_agent"] == "TestPhone/1.2"
        assert reg["flow_alive"] is True
        flows = await get_json(server, "/flows")
        (flow,) = [f for f in flows["flows"] if f["peer"] == f"127.0.0.1:{bob.local[1]}"]
        assert reg["flow"] == flow["id"]
        # Filter by AoR (the scheme and host case do not matter).
        assert (await get_json(server, "/registrations?aor=sip:bob@EXAMPLE.com"))["count"] == 1
        assert (await get_json(server, "/registrations?aor=carol@example.com"))["registrations"] == []
        status, _, _ = await http(server, "GET", "/registrations?aor=@")
        assert status == 400


async def test_flows_show_peer_age_keepalive_and_bindings(tmp_path: Path) -> None:
    async with running_server(tmp_path, mgmt=MGMT) as server:
        bob = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(bob, "bob", instance=INST_B, reg_id=1)
        other = await TcpUA.open(addr(server, "tcp"))
        await other.send(request(other, "OPTIONS", "sip:example.com"))
        assert (await other.recv_response()).status == 200

        async def find(ua: TcpUA) -> dict[str, Any]:
            flows = (await get_json(server, "/flows"))["flows"]
            return next(f for f in flows if f["peer"] == f"127.0.0.1:{ua.local[1]}")

        f_bob, f_other = await find(bob), await find(other)
        assert f_bob["transport"] == "tcp" and f_bob["bindings"] == 1 and f_other["bindings"] == 0
        assert f_bob["last_keepalive"] is None and f_bob["age"] >= 0 and f_bob["idle"] >= 0
        # RFC 5626 §4.4.1 CRLF keep-alive: the server pongs and the flow shows the keep-alive.
        await bob.send(b"\r\n\r\n")
        with trio.fail_after(3):
            assert await bob.stream.receive_some(100) == b"\r\n"
        f_bob = await find(bob)
        assert f_bob["last_keepalive"] is not None and f_bob["last_keepalive"] < 2


async def test_transactions_in_flight_are_listed(tmp_path: Path) -> None:
    async with running_server(tmp_path, mgmt=MGMT) as server:
        bob = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(bob, "bob", instance=INST_B, reg_id=1)
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com", call_id="tx-call", body="v=0\r\n"))
        inv = await bob.recv_request()
        data = await get_json(server, "/transactions")
        assert data["count"] == len(server.transactions) >= 2
        mine = [t for t in data["transactions"] if t["call_id"] == "tx-call"]
        assert {(t["kind"], t["method"]) for t in mine} == {("server", "INVITE"), ("client", "INVITE")}
        assert all(t["state"] and t["flow"] for t in mine)
        assert len((await get_json(server, "/transactions?limit=1"))["transactions"]) == 1
        status, _, _ = await http(server, "GET", "/transactions?limit=x")
        assert status == 400
        await bob.send(response_to(inv, 486, "Busy Here", to_tag="b1"))
        assert (await alice.recv_response()).status == 486


# ------------------------------------------------------------------------------ actions

async def test_unregister_by_post_and_delete(tmp_path: Path) -> None:
    async with running_server(tmp_path, mgmt=MGMT) as server:
        a = await UdpUA.open(addr(server, "udp"))
        await reg_ok(a, "alice", contact_host=a.hostport())
        b = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(b, "bob", instance=INST_B, reg_id=1)
        status, _, body = await http(server, "POST", "/registrations/unregister?aor=alice@example.com")
        assert status == 200 and json.loads(body) == {"aor": "alice@example.com", "removed": 1}
        # A caller now finds alice unregistered.
        await a.send(request(a, "MESSAGE", "sip:alice@example.com", from_user="bob", body="hi"))
        assert (await a.recv_response()).status == 480
        status, _, body = await http(server, "DELETE", "/registrations/bob%40example.com")
        assert status == 200 and json.loads(body)["removed"] == 1
        assert (await get_json(server, "/registrations"))["count"] == 0
        status, _, body = await http(server, "DELETE", "/registrations/bob@example.com")
        assert status == 404 and "no registrations" in json.loads(body)["error"]
        status, _, _ = await http(server, "POST", "/registrations/unregister")
        assert status == 400
        # JSON body instead of the query string works too.
        await reg_ok(a, "alice", contact_host=a.hostport())
        status, _, body = await http(server, "POST", "/registrations/unregister", {"aor": "alice@example.com"})
        assert status == 200 and json.loads(body)["removed"] == 1


async def test_close_flow_drops_connection_and_bindings(tmp_path: Path) -> None:
    async with running_server(tmp_path, mgmt=MGMT) as server:
        bob = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(bob, "bob", instance=INST_B, reg_id=1)
        (reg,) = (await get_json(server, "/registrations"))["registrations"]
        status, _, body = await http(server, "POST", "/flows/close?id=" + reg["flow"].replace("#", "%23"))
        assert status == 200 and json.loads(body) == {"closed": reg["flow"], "bindings_removed": 1}
        with pytest.raises(EOFError):
            await bob.recv_raw(timeout=3)
        assert (await get_json(server, "/registrations"))["count"] == 0
        status, _, _ = await http(server, "POST", "/flows/close?id=" + reg["flow"].replace("#", "%23"))
        assert status == 404
        status, _, _ = await http(server, "POST", "/flows/close")
        assert status == 400
        values = await scrape(server)
        assert metric(values, "sipserver_flows_closed_total", transport="tcp", cause="server_closed") == 1


async def test_credentials_reload(tmp_path: Path) -> None:
    from sipserver.auth.credentials import write_user

    creds = tmp_path / "users.toml"
    write_user(creds, "alice", "example.com", "wonderland")
    auth = {"enabled": True, "realm": "example.com", "credentials_file": str(creds)}
    async with running_server(tmp_path, mgmt=MGMT, auth=auth) as server:
        write_user(creds, "bob", "example.com", "builder")
        status, _, body = await http(server, "POST", "/credentials/reload")
        assert status == 200 and json.loads(body)["users"] == 2
        assert server.credentials is not None and server.credentials.has_user("bob")
        creds.write_text("this is [ not toml")
        status, _, body = await http(server, "POST", "/credentials/reload")
        assert status == 500 and "previous users" in json.loads(body)["error"]
        assert server.credentials.has_user("bob")
    async with running_server(tmp_path, mgmt=MGMT) as server:
        status, _, body = await http(server, "POST", "/credentials/reload")
        assert status == 409 and "credentials_file" in json.loads(body)["error"]


async def test_trace_by_source_and_by_aor(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sipserver.trace")
    async with running_server(tmp_path, mgmt=MGMT) as server:
        ua = await UdpUA.open(addr(server, "udp"))

        def traced() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "sipserver.trace"]

        await ua.send(request(ua, "OPTIONS", "sip:example.com", call_id="before"))
        await ua.recv_response()
        assert traced() == []
        status, _, body = await http(server, "POST", "/trace", {"source": "127.0.0.1", "aor": None, "enabled": True})
        assert status == 200 and json.loads(body) == {"sources": ["127.0.0.1"], "aors": []}
        await ua.send(request(ua, "OPTIONS", "sip:example.com", call_id="traced-1"))
        await ua.recv_response()
        records = traced()
        assert [r.direction for r in records] == ["in", "out"]  # type: ignore[attr-defined]
        assert all(r.levelno == logging.INFO for r in records)
        assert "OPTIONS sip:example.com SIP/2.0" in records[0].getMessage()
        assert "Call-ID: traced-1" in records[0].getMessage()
        assert records[1].getMessage().split("\n", 1)[1].startswith("SIP/2.0 200")
        assert all(r.flow.startswith("udp:") for r in records)  # type: ignore[attr-defined]
        # Off again: nothing more is traced.
        status, _, body = await http(server, "POST", "/trace", {"source": "127.0.0.1", "aor": None, "enabled": False})
        assert json.loads(body) == {"sources": [], "aors": []}
        caplog.clear()
        await ua.send(request(ua, "OPTIONS", "sip:example.com"))
        await ua.recv_response()
        assert traced() == []
        # By AoR: alice's REGISTER and its 200 are traced, bob's are not.
        await http(server, "POST", "/trace", {"source": None, "aor": "sip:alice@example.com", "enabled": True})
        assert (await get_json(server, "/trace"))["aors"] == ["alice@example.com"]
        await reg_ok(ua, "bob", contact_host=ua.hostport())
        assert traced() == []
        await reg_ok(ua, "alice", contact_host=ua.hostport())
        assert [r.direction for r in traced()] == ["in", "out"]  # type: ignore[attr-defined]
        assert "To: <sip:alice@example.com>" in traced()[0].getMessage()
        # Everything off.
        status, _, body = await http(server, "POST", "/trace", {"enabled": False})
        assert status == 200 and json.loads(body) == {"sources": [], "aors": []}
        for bad in (b"not json", {"enabled": "yes"}, {"source": "not-an-ip", "enabled": True},
                    {"enabled": True}, {"source": 5, "enabled": True}, {"enabled": True, "x": 1}, [1]):
            status, _, body = await http(server, "POST", "/trace", bad)
            assert status == 400, bad
            assert json.loads(body)["error"]


# ------------------------------------------------------------------------------ metrics

async def test_metrics_follow_the_traffic(tmp_path: Path, autojump: MockClock) -> None:
    async with running_server(tmp_path, mgmt=MGMT) as server:
        before = await scrape(server)
        assert metric(before, "sipserver_info", version=__version__) == 1
        assert metric(before, "sipserver_registrations", transport="tcp") == 0
        bob = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(bob, "bob", instance=INST_B, reg_id=1)
        ua = await UdpUA.open(addr(server, "udp"))
        await ua.send(request(ua, "OPTIONS", "sip:example.com"))
        await ua.recv_response()
        await ua.send(request(ua, "MESSAGE", "sip:nobody@example.com", body="x"))
        assert (await ua.recv_response()).status == 480
        after = await scrape(server)

        def delta(name: str, **labels: str) -> float:
            return metric(after, name, **labels) - metric(before, name, **labels)

        assert delta("sipserver_requests_total", method="REGISTER") == 1
        assert delta("sipserver_requests_total", method="OPTIONS") == 1
        assert delta("sipserver_responses_total", code="200") == 2
        assert delta("sipserver_responses_total", code="480") == 1
        assert metric(after, "sipserver_registrations", transport="tcp") == 1
        assert metric(after, "sipserver_registered_aors") == 1
        assert metric(after, "sipserver_flows", transport="tcp") == 1
        assert metric(after, "sipserver_flows", transport="udp") >= 1
        assert delta("sipserver_message_processing_seconds_count") == 3
        assert metric(after, "sipserver_message_processing_seconds_bucket", le="+Inf") == metric(
            after, "sipserver_message_processing_seconds_count"
        )
        assert metric(after, "sipserver_transactions") == len(server.transactions)

        # A datagram that is not SIP counts as a parse error.
        await ua.send(b"THIS IS NOT SIP\r\n\r\n")

        async def parse_error_seen() -> bool:
            return metric(await scrape(server), "sipserver_parse_errors_total") == metric(before, "sipserver_parse_errors_total") + 1

        await until(parse_error_seen)
        # The event-loop probe wakes every 0.5 s.
        await trio.sleep(0.6)
        assert metric(await scrape(server), "sipserver_event_loop_lag_seconds_count") >= 1


async def test_flow_failure_metrics_peer_close_and_430(tmp_path: Path, autojump: MockClock) -> None:
    """RFC 5626 §5.3.1 / §7: a registered flow that dies and a 430 from downstream are counted as
    flow failures; the 430 also as a failover to the instance's next flow."""
    async with running_server(tmp_path, mgmt=MGMT) as server:
        f1 = await TcpUA.open(addr(server, "tcp"))
        f2 = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(f1, "bob", instance=INST_B, reg_id=1, call_id="b")
        await reg_ok(f2, "bob", instance=INST_B, reg_id=2, call_id="b", cseq=2)
        alice = await UdpUA.open(addr(server, "udp"))
        await alice.send(request(alice, "INVITE", "sip:bob@example.com", body="v=0\r\n"))
        inv1 = await f1.recv_request()
        await f1.send(response_to(inv1, 430, "Flow Failed", to_tag="t1"))
        inv2 = await f2.recv_request()
        await f2.send(response_to(inv2, 486, "Busy Here", to_tag="t2"))
        assert (await alice.recv_response()).status == 486
        values = await scrape(server)
        assert metric(values, "sipserver_failovers_total", cause="430") == 1
        assert metric(values, "sipserver_flow_failures_total", cause="430") == 1
        assert metric(values, "sipserver_responses_total", code="486") >= 1
        # The phone's remaining flow goes away: its binding with it.
        await f2.close()

        async def closed_seen() -> bool:
            v = await scrape(server)
            return metric(v, "sipserver_flow_failures_total", cause="closed") == 1

        await until(closed_seen)
        values = await scrape(server)
        assert metric(values, "sipserver_flows_closed_total", transport="tcp", cause="closed") == 1
        assert metric(values, "sipserver_registrations", transport="tcp") == 0


async def test_auth_failures_and_rate_limit_counted(tmp_path: Path) -> None:
    users = {"alice": {"password": "wonderland"}}
    async with running_server(
        tmp_path,
        mgmt=MGMT,
        users=users,
        auth={"realm": "example.com"},
        rate_limit={"enabled": True, "requests_per_second": 3, "burst": 3},
    ) as server:
        ua = await UdpUA.open(addr(server, "udp"))
        wrong = (
            'Digest username="alice", realm="example.com", nonce="bogus", uri="sip:example.com", '
            'response="00000000000000000000000000000000", algorithm=MD5'
        )
        await ua.send(register(ua, "alice", contact_host=ua.hostport(), extra=[f"Authorization: {wrong}"]))
        assert (await ua.recv_response()).status == 401
        statuses = []
        for _ in range(5):
            await ua.send(request(ua, "OPTIONS", "sip:example.com"))
            statuses.append((await ua.recv_response()).status)
        assert 503 in statuses
        values = await scrape(server)
        assert metric(values, "sipserver_auth_failures_total") == server.stats.get("auth_failures", 0) >= 1
        assert metric(values, "sipserver_rate_limited_total") == statuses.count(503)
        assert metric(values, "sipserver_responses_total", code="401") == 1


async def test_stats_endpoint(tmp_path: Path) -> None:
    async with running_server(tmp_path, mgmt=MGMT) as server:
        bob = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(bob, "bob", instance=INST_B, reg_id=1)
        stats = await get_json(server, "/stats")
        assert stats["registrations"] == 1 and stats["aors"] == 1
        assert stats["flows"]["tcp"] == 1
        assert stats["counters"]["requests_REGISTER"] == 1
        assert stats["responses"] == {"200": 1}
        assert stats["messages"] == 1 and stats["processing_seconds_avg"] > 0


# ------------------------------------------------------------------------------ sipserver ctl

async def test_ctl_commands_against_running_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with running_server(tmp_path, mgmt=MGMT) as server:
        bob = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(bob, "bob", instance=INST_B, reg_id=1, extra=["User-Agent: TestPhone/1.2"])
        alice = await UdpUA.open(addr(server, "udp"))
        await reg_ok(alice, "alice", contact_host=alice.hostport())

        rc, out, err = await ctl(capsys, server, "registrations")
        assert rc == 0 and err == ""
        header, *rows = out.splitlines()
        assert header.split() == [
            "AOR", "CONTACT", "INSTANCE", "REG-ID", "TRANSPORT", "SOURCE", "EXPIRES", "FLOW", "KIND",
            "KEEPALIVE", "USER-AGENT",
        ]
        assert len(rows) == 2
        bob_row = next(r for r in rows if r.startswith("bob@example.com"))
        assert "TestPhone/1.2" in bob_row and "tcp" in bob_row and INST_B in bob_row and "outbound" in bob_row
        # issue 17: alice registered over UDP without outbound: an implicit flow the server pings
        alice_row = next(r for r in rows if r.startswith("alice@example.com"))
        assert "implicit" in alice_row and "unanswered" in alice_row
        # Aligned: every row starts its CONTACT column where the header does.
        col = header.index("CONTACT")
        assert all(r[col - 2 : col] == "  " and r[col] != " " for r in rows)

        rc, out, _ = await ctl(capsys, server, "registrations", "bob@example.com", "--json")
        assert rc == 0
        data = json.loads(out)
        assert [r["aor"] for r in data["registrations"]] == ["bob@example.com"]
        flow_id = data["registrations"][0]["flow"]

        rc, out, _ = await ctl(capsys, server, "--json", "flows")
        assert rc == 0 and flow_id in [f["id"] for f in json.loads(out)["flows"]]
        rc, out, _ = await ctl(capsys, server, "flows")
        assert rc == 0 and out.splitlines()[0].split()[:3] == ["ID", "TRANSPORT", "PEER"] and flow_id in out

        rc, out, _ = await ctl(capsys, server, "stats")
        assert rc == 0
        assert re.search(r"^registrations\s+2 \(2 AoRs\)$", out, re.M)
        assert re.search(r"^requests\s+REGISTER 2$", out, re.M)
        rc, out, _ = await ctl(capsys, server, "info")
        assert rc == 0 and re.search(rf"^version\s+{re.escape(__version__)}$", out, re.M)
        rc, out, _ = await ctl(capsys, server, "transactions")
        assert rc == 0 and "transactions in flight" in out
        rc, out, _ = await ctl(capsys, server, "metrics")
        assert rc == 0 and metric(parse_metrics(out), "sipserver_registrations", transport="tcp") == 1

        rc, out, _ = await ctl(capsys, server, "trace", "on", "--aor", "alice@example.com")
        assert rc == 0 and "tracing aor alice@example.com" in out
        rc, out, _ = await ctl(capsys, server, "trace")
        assert rc == 0 and "tracing aor alice@example.com" in out
        rc, out, _ = await ctl(capsys, server, "trace", "off")
        assert rc == 0 and "tracing is off" in out
        rc, _, err = await ctl(capsys, server, "trace", "on")
        assert rc == 1 and "--source" in err

        rc, out, _ = await ctl(capsys, server, "unregister", "alice@example.com")
        assert rc == 0 and "removed 1" in out
        rc, _, err = await ctl(capsys, server, "unregister", "alice@example.com")
        assert rc == 1 and "no registrations for alice@example.com (HTTP 404)" in err

        rc, out, _ = await ctl(capsys, server, "close-flow", flow_id)
        assert rc == 0 and flow_id in out
        with pytest.raises(EOFError):
            await bob.recv_raw(timeout=3)
        rc, _, err = await ctl(capsys, server, "close-flow", flow_id)
        assert rc == 1 and "no such flow" in err

        rc, out, _ = await ctl(capsys, server, "registrations")
        assert rc == 0 and out.strip() == "no registrations"
        rc, _, err = await ctl(capsys, server, "reload")
        assert rc == 1 and "credentials_file" in err and "HTTP 409" in err


async def test_ctl_reads_address_and_token_from_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with running_server(tmp_path, mgmt={**MGMT, "token": TOKEN}) as server:
        host, port = server.mgmt_address
        cfg = tmp_path / "ctl.toml"
        cfg.write_text(f'[mgmt]\nlisten = "0.0.0.0:{port}"\ntoken = "{TOKEN}"\n')
        capsys.readouterr()
        rc = await trio.to_thread.run_sync(cli.main, ["ctl", "-c", str(cfg), "info", "--json"])
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert json.loads(out)["version"] == __version__


# ------------------------------------------------------------------------------ JSON logs end to end

def _reader(stream: Any, lines: queue.Queue[str]) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode("utf-8", "replace"))


def test_json_logs_end_to_end_with_mgmt(tmp_path: Path) -> None:
    """`sipserver run --log-format json --mgmt 127.0.0.1:0`: every stderr line is one JSON object;
    the management address is learnt from the log and `sipserver ctl` talks to it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sipserver", "run", "--log-format", "json", "--listen", "udp:127.0.0.1:0",
         "--mgmt", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"), "--domain", "example.com"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stderr, lines), daemon=True).start()
    seen: list[str] = []
    try:
        address = None
        deadline = time.monotonic() + 20
        while address is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                assert proc.poll() is None, "".join(seen)
                continue
            seen.append(line)
            m = re.search(r"management API listening on http://([\d.]+:\d+)", line)
            if m:
                address = m.group(1)
        assert address is not None, "".join(seen)
        out = subprocess.run(
            [sys.executable, "-m", "sipserver", "ctl", "--mgmt", address, "--json", "info"],
            capture_output=True, timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["listeners"][0].startswith("udp:127.0.0.1:")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    time.sleep(0.2)
    while not lines.empty():
        seen.append(lines.get())
    assert proc.returncode == 0
    records = [json.loads(line) for line in seen if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    msgs = [r["msg"] for r in records]
    assert any(m.startswith("listening on udp:127.0.0.1:") for m in msgs)
    assert any(r["logger"] == "sipserver.mgmt" for r in records)
    assert any("shutting down" in m for m in msgs)


# ------------------------------------------------------------------------------ web phone in a browser



def _require(ok: bool, why: str) -> None:
    """Missing browser or SIP.js: skip on a developer machine, fail in CI (CI=true)."""
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _Browser:
    """One headless Chromium process showing one page (its own profile, so its own instance id)."""

    def __init__(self, chrome: str, url: str, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [chrome, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", f"--user-data-dir={profile}",
             "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             "--autoplay-policy=no-user-gesture-required", "--enable-logging=stderr", "--v=0", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    def stop(self) -> str:
        """Stop the browser; its log (console messages included) for failure reports."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            err = self.proc.communicate(timeout=10)[1]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            err = self.proc.communicate(timeout=10)[1]
        return err.decode("utf-8", "replace")[-3000:]


async def test_webphones_in_headless_chromium_register_and_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The example web phone in a real browser registers over WebSocket with SIP Outbound
    (RFC 7118, RFC 5626) and shows up in GET /registrations; a second one calls it and the call
    is answered and ACKed through the server; closing a browser closes its flow, which removes
    its binding (RFC 5626 §5.3.1)."""
    chrome = _chromium()
    _require(chrome is not None, "chromium is not installed (apt-get install chromium)")
    _require((SIPJS_LIB / "index.js").exists(), "SIP.js missing: npm ci in tests/interop/js")
    assert chrome is not None
    files = ThreadingHTTPServer(("127.0.0.1", 0), WebphoneFiles)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    browsers: list[_Browser] = []

    async def wait_for(what: str, predicate: Any, timeout: float = 40) -> None:
        with trio.move_on_after(timeout):
            while not await predicate():
                await trio.sleep(0.2)
            return
        logs = "\n".join(b.stop() for b in browsers)
        pytest.fail(f"{what} did not happen; browser logs:\n{logs}")

    async with running_server(tmp_path, mgmt=MGMT) as server:
        ws_host, ws_port = addr(server, "ws")
        base = (
            f"http://127.0.0.1:{files.server_address[1]}/index.html?server=ws://{ws_host}:{ws_port}"
            "&domain=example.com&register=1"
        )

        async def registered(user: str) -> list[dict[str, Any]]:
            regs: list[dict[str, Any]] = (await get_json(server, f"/registrations?aor={user}@example.com"))["registrations"]
            return regs

        try:
            bob = _Browser(chrome, base + "&user=bob&answer=1", tmp_path / "bob")
            browsers.append(bob)
            await wait_for("bob's registration", lambda: registered("bob"))
            (reg,) = await registered("bob")
            assert reg["transport"] == "ws" and reg["outbound"] is True and reg["reg_id"] == 1
            assert reg["instance"] and reg["flow_alive"] is True
            assert reg["user_agent"] == "sipserver-webphone (SIP.js)"
            assert reg["contact"].split("@", 1)[1].split(";")[0].endswith(".invalid")

            # Watch the call through the trace switch: every message to or from bob's AoR.
            caplog.set_level(logging.INFO, logger="sipserver.trace")
            await http(server, "POST", "/trace", {"source": None, "aor": "bob@example.com", "enabled": True})
            browsers.append(_Browser(chrome, base + "&user=alice&call=bob", tmp_path / "alice"))

            def traced(direction: str, start: str, cseq: str) -> bool:
                for r in caplog.records:
                    if r.name == "sipserver.trace" and r.direction == direction:  # type: ignore[attr-defined]
                        text = r.getMessage().split("\n", 1)[1]
                        if text.startswith(start) and re.search(rf"^CSeq: *\d+ {cseq}\r?$", text, re.M | re.I):
                            return True
                return False

            async def answered() -> bool:
                # bob's 200 OK went out to alice, and alice's ACK came in.
                return traced("out", "SIP/2.0 200", "INVITE") and traced("in", "ACK ", "ACK")

            await wait_for("the call from alice to bob", answered)
            assert (await get_json(server, "/stats"))["counters"]["requests_INVITE"] == 1
            assert len(await registered("alice")) == 1
        finally:
            for b in browsers:
                b.stop()
            files.shutdown()

        async def gone() -> bool:
            return (await get_json(server, "/registrations"))["count"] == 0

        await until(gone, timeout=10)


async def test_binding_kinds_and_nat_keepalives_are_metrics(tmp_path: Path) -> None:
    """Issue 17: bindings by kind, and the server-sent keepalives, are visible as metrics."""
    async with running_server(tmp_path, mgmt=MGMT, nat={"keepalive": True, "keepalive_interval": 1.0}) as server:
        bob = await TcpUA.open(addr(server, "tcp"))
        await reg_ok(bob, "bob", instance=INST_B, reg_id=1)
        alice = await UdpUA.open(addr(server, "udp"))
        await reg_ok(alice, "alice", contact_host=alice.hostport())
        ping = await alice.recv_request(timeout=3)
        assert ping.method == "OPTIONS"
        await alice.send(response_to(ping, 200, "OK"))
        await alice.expect_nothing(0.2)
        values = await scrape(server)
        assert metric(values, "sipserver_bindings", kind="outbound") == 1
        assert metric(values, "sipserver_bindings", kind="implicit") == 1
        assert metric(values, "sipserver_nat_keepalives_sent_total") >= 1
        assert metric(values, "sipserver_nat_keepalives_answered_total") >= 1
