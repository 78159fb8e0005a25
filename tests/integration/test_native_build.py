"""The optional mypyc build (scripts/build-native, sipserver/native.py; issue 19) builds on this
machine, and the compiled server behaves as the pure one on the wire.

CI runs the whole suite on the pure-Python code; this module is where the compiled code is
tested: it builds into a temporary directory, runs the unit tests of the compiled modules against
that build, and starts `sipserver run` on it for REGISTERs and bad input over UDP and TCP.
Without mypyc or a C compiler it skips on a developer machine and fails under CI=true."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import build_native  # noqa: E402
from serverproc import ServerProcess, in_ci  # noqa: E402

from sipserver import native  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

# The unit tests of the compiled modules (sipserver.native.MODULES).
UNIT_TESTS = [
    "tests/unit/test_parser_rfc4475.py", "tests/unit/test_parser_fuzz.py", "tests/unit/test_headers.py",
    "tests/unit/test_uri.py", "tests/unit/test_message_edit.py", "tests/unit/test_build.py",
    "tests/unit/test_framer.py", "tests/unit/test_registrar.py", "tests/unit/test_registrar_fast_response.py",
    "tests/unit/test_location_store.py", "tests/unit/test_cluster_hop.py", "tests/unit/test_native.py",
    "tests/unit/test_transaction_server.py", "tests/unit/test_transaction_client.py",
    "tests/unit/test_transaction_table.py", "tests/unit/test_transaction_properties.py",
]


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    why = build_native.missing_tools()
    if why is not None:
        if in_ci():
            pytest.fail(f"CI=true: the mypyc build cannot be tested: {why}")
        pytest.skip(why)
    out = tmp_path_factory.mktemp("native") / "build"
    # gcc -O0: the same mypyc output (what these tests check: compiled semantics, native
    # classes, run-time type checks) in half the build time of the shipped -O3 (43 s against
    # 87 s for 23 modules on the CI machine), which keeps the suite well under its budget.
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "build_native.py"), "--out", str(out),
                           "--opt-level", "0"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"build-native failed:\n{proc.stdout}\n{proc.stderr}"
    assert f"compiled {len(native.MODULES)} modules" in proc.stdout
    yield out


def _env(build: Path) -> dict[str, str]:
    env = {**os.environ, "SIPSERVER_NATIVE_DIR": str(build)}
    env.pop("SIPSERVER_PURE", None)
    return env


def test_every_listed_module_loads_compiled(build: Path) -> None:
    code = ("import importlib, sipserver.native as n\n"
            "print(n.status())\n"
            "for m in n.MODULES: assert n.is_compiled(importlib.import_module(m)), m\n")
    out = subprocess.run([sys.executable, "-c", code], env=_env(build), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"compiled with mypyc: {len(native.MODULES)} modules from {build}"


def test_the_compiled_modules_pass_their_unit_tests(build: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *UNIT_TESTS],
        cwd=REPO, env=_env(build), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1]


def _register(user: str, port: int, transport: str, local: tuple[str, int]) -> bytes:
    return (
        f"REGISTER sip:example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {local[0]}:{local[1]};branch=z9hG4bK-{user}-{time.monotonic_ns()};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:{user}@example.com>;tag=f{user}\r\n"
        f"To: <sip:{user}@example.com>\r\n"
        f"Call-ID: native-{user}@test\r\n"
        f"CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:{user}@{local[0]}:{local[1]};transport={transport.lower()}>;expires=300\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def _status_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode()


def _message(to: str, local: tuple[str, int]) -> bytes:
    return (
        f"MESSAGE sip:{to}@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK-msg-{time.monotonic_ns()};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:zed@example.com>;tag=fzed\r\n"
        f"To: <sip:{to}@example.com>\r\n"
        f"Call-ID: native-msg@test\r\n"
        f"CSeq: 1 MESSAGE\r\n"
        f"Content-Type: text/plain\r\n"
        f"Content-Length: 5\r\n\r\nhello"
    ).encode()


def _ok_for(request: bytes) -> bytes:
    """A UAS's 200 to ``request``: its Via, From, To (tagged), Call-ID and CSeq lines."""
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    keep = [line for line in head if line.split(b":", 1)[0].lower() in (b"via", b"from", b"call-id", b"cseq")]
    to = next(line for line in head if line.lower().startswith(b"to:"))
    return b"\r\n".join([b"SIP/2.0 200 OK", *keep, to + b";tag=uas", b"Content-Length: 0", b"", b""])


def test_the_compiled_server_registers_relays_and_rejects_bad_input(build: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPSERVER_NATIVE_DIR", str(build))
    monkeypatch.delenv("SIPSERVER_PURE", raising=False)
    srv = ServerProcess(tmp_path)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(5)
            udp.bind(("127.0.0.1", 0))
            udp.sendto(_register("alice", srv.port, "UDP", udp.getsockname()), ("127.0.0.1", srv.port))
            reply = udp.recv(65535)
            assert _status_line(reply) == "SIP/2.0 200 OK"
            assert f"<sip:alice@127.0.0.1:{udp.getsockname()[1]};transport=udp>".encode() in reply
            # a MESSAGE for alice goes through the compiled proxy procedure and routing to her
            # socket (RFC 3261 §16.5-§16.6: the Request-URI becomes her registered Contact), and
            # her 200 back to the sender (§16.7)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                sender.settimeout(5)
                sender.bind(("127.0.0.1", 0))
                sender.sendto(_message("alice", sender.getsockname()), ("127.0.0.1", srv.port))
                got = udp.recv(65535)
                assert _status_line(got) == f"MESSAGE sip:alice@127.0.0.1:{udp.getsockname()[1]};transport=udp SIP/2.0"
                assert got.endswith(b"\r\n\r\nhello")
                udp.sendto(_ok_for(got), ("127.0.0.1", srv.port))
                answer = sender.recv(65535)
                assert _status_line(answer) == "SIP/2.0 200 OK"
                assert b"CSeq: 1 MESSAGE" in answer
            # a request whose CSeq is not a number: 400 naming the header, not a crash
            bad = _register("bob", srv.port, "UDP", udp.getsockname()).replace(b"CSeq: 1 REGISTER", b"CSeq: x REGISTER")
            udp.sendto(bad, ("127.0.0.1", srv.port))
            reply = udp.recv(65535)
            assert _status_line(reply).startswith("SIP/2.0 400")
            assert b"CSeq" in reply.split(b"\r\n", 1)[0]
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as tcp:
            tcp.sendall(_register("carol", srv.port, "TCP", tcp.getsockname()))
            reply = tcp.recv(65535)
            assert _status_line(reply) == "SIP/2.0 200 OK"
            tcp.sendall(b"\r\n\r\n")  # RFC 5626 §4.4.1 ping: the pong is one CRLF
            assert tcp.recv(16) == b"\r\n"
            # a Content-Length beyond what is sent, then the connection closed by us: no crash
            tcp.sendall(b"OPTIONS sip:example.com SIP/2.0\r\nContent-Length: 99999999\r\n\r\n")
        # still serving: the UDP user re-registers
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(5)
            udp.sendto(_register("dave", srv.port, "UDP", ("127.0.0.1", 5999)), ("127.0.0.1", srv.port))
            assert _status_line(udp.recv(65535)) == "SIP/2.0 200 OK"
        log = srv.output()
        assert f"code: compiled with mypyc: {len(native.MODULES)} modules from {build}" in log
        assert "Traceback" not in log
    finally:
        assert srv.stop() == 0, srv.output()
