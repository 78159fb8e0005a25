"""sipp against the installed server: outbound REGISTER over UDP, TCP and TLS, calls and MESSAGEs
delivered over the flow a UA registered on, and a negative run proving the scenario checks bite.

The scenarios live in scripts/sipp/ (shared with the benchmarks in scripts/bench/). Every check
that matters is inside a scenario (sipp `ereg check_it`, expected responses), so a test passes
only when sipp exits 0; on failure the assertion message carries sipp's error log, its message
trace and the server log, so a CI log explains itself.

Registered UAs put 192.0.2.1:5999 (TEST-NET-1, nothing listens there) in their Contact, so a
request that reaches them can only have come over their registered flow (OB-REG-09, OB-AP-05).

The Debian sipp build has no TLS; for TLS the test puts a small TLS relay in front of sipp's TCP
socket, so the server still sees a genuine TLS flow (a sipp built with OpenSSL uses `-t l1`).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverproc import REPO, ServerProcess, free_port, require_tool

sys.path.insert(0, str(REPO / "tests" / "integration"))
from certs import make_self_signed  # noqa: E402

pytestmark = pytest.mark.interop

SIPP_DIR = REPO / "scripts" / "sipp"
DOMAIN = "example.com"
OUTBOUND = "path, outbound"


# --------------------------------------------------------------------------------------------
# sipp runner


class Sipp:
    """One sipp process: command line, trace files in its own directory, report for failures."""

    def __init__(self, sipp: str, workdir: Path, name: str, port: int, scenario: str,
                 *, transport: str = "u1", users: list[tuple[str, str]] | None = None,
                 service: str | None = None, keys: dict[str, str] | None = None,
                 sets: dict[str, str] | None = None, ooc: str | None = None,
                 calls: int = 1, extra: list[str] | None = None) -> None:
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.err = self.dir / "errors.log"
        self.msg = self.dir / "messages.log"
        self.screen = self.dir / "screen.txt"
        self.port = free_port()
        args = [sipp, f"127.0.0.1:{port}", "-sf", str(SIPP_DIR / scenario),
                "-t", transport, "-i", "127.0.0.1", "-p", str(self.port), "-m", str(calls),
                "-key", "domain", DOMAIN, "-nostdin", "-timeout", "20s", "-timeout_error",
                "-recv_timeout", "8000", "-default_behaviors", "all,-bye",
                "-trace_err", "-error_file", str(self.err),
                "-trace_msg", "-message_file", str(self.msg)]
        if users is not None:
            csv = self.dir / "users.csv"
            csv.write_text("SEQUENTIAL\n" + "".join(f"{u};{i}\n" for u, i in users))
            args += ["-inf", str(csv)]
        if service is not None:
            args += ["-s", service]
        for k, v in (keys or {}).items():
            args += ["-key", k, v]
        for k, v in (sets or {}).items():
            args += ["-set", k, v]
        if ooc is not None:
            args += ["-oocsf", str(SIPP_DIR / ooc)]
        args += extra or []
        self.args = args
        self._out = open(self.screen, "wb")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(self.dir))

    def wait(self, timeout: float = 30) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = -9
        self._out.close()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._out.closed:
            self._out.close()

    def messages(self) -> str:
        return self.msg.read_text(errors="replace") if self.msg.exists() else ""

    def report(self) -> str:
        def tail(path: Path, n: int = 6000) -> str:
            return path.read_text(errors="replace")[-n:] if path.exists() else "(none)"

        return (f"--- sipp {self.name}: {' '.join(self.args)}\n"
                f"--- errors:\n{tail(self.err)}\n--- messages:\n{tail(self.msg, 12000)}\n"
                f"--- screen (tail):\n{tail(self.screen, 2500)}\n")


def explain(server: ServerProcess, *runs: Sipp) -> str:
    return "".join(r.report() for r in runs) + "--- server log (tail):\n" + server.output()[-8000:]


def uuid_for(n: int) -> str:
    return f"5e0e7c3a-1d2b-4c5d-8e9f-{n:012x}"


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def sipp_path() -> str:
    return require_tool("sipp", "apt-get install sip-tester")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sipp_path: str,
           tls_files: tuple[Path, Path]) -> Iterator[ServerProcess]:
    """One server (UDP, TCP, WS, TLS) for the module; each test uses its own users."""
    base = tmp_path_factory.mktemp("sipp-server")
    cert, key = tls_files
    # sipp runs come from 127.0.0.1 in bursts; keep the per-address limiter out of the picture
    srv = ServerProcess(base, tls=(cert, key), config="[rate_limit]\nenabled = false\n")
    yield srv
    code = srv.stop()
    assert code == 0, f"server exit code {code}\n{srv.output()[-8000:]}"


def sipp_supports_tls(sipp: str) -> bool:
    probe = subprocess.run([sipp, "127.0.0.1:9", "-sn", "uac", "-t", "l1", "-m", "1",
                            "-timeout", "1s", "-nostdin"], capture_output=True, timeout=10)
    return b"compile SIPp with OpenSSL" not in probe.stdout + probe.stderr


class TlsRelay:
    """TCP on 127.0.0.1:port -> TLS to the server, bytes copied both ways, one thread per
    direction. Lets a sipp without OpenSSL drive a real TLS flow."""

    def __init__(self, tls_port: int) -> None:
        self.tls_port = tls_port
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE  # throwaway self-signed test certificate
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                plain, _ = self.lsock.accept()
            except OSError:
                return
            raw = socket.create_connection(("127.0.0.1", self.tls_port), timeout=5)
            tls = self.ctx.wrap_socket(raw, server_hostname="localhost")
            tls.settimeout(None)
            self.socks += [plain, tls]
            threading.Thread(target=self._pump, args=(plain, tls), daemon=True).start()
            threading.Thread(target=self._pump, args=(tls, plain), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self.lsock.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


# --------------------------------------------------------------------------------------------
# REGISTER


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_outbound_register_gets_require_outbound_OB_CS_01_OB_REG_10_15(
        server: ServerProcess, sipp_path: str, tmp_path: Path, transport: str) -> None:
    """OB-CS-01, OB-REG-10, OB-REG-15: an outbound REGISTER straight to the server (one Via) over
    UDP / TCP gets 200 with `Require: outbound` and its Contact echoed with reg-id and
    +sip.instance (checked inside outbound_register.xml)."""
    user = f"alice-{transport}"
    run = Sipp(sipp_path, tmp_path, "register", server.port, "outbound_register.xml",
               transport=transport, users=[(user, uuid_for(1 if transport == "u1" else 2))],
               keys={"supported": OUTBOUND})
    rc = run.wait()
    assert rc == 0, explain(server, run)
    assert "Require: outbound" in run.messages()


def test_outbound_register_over_tls_OB_CS_01(server: ServerProcess, sipp_path: str, tmp_path: Path,
                                            tls_files: tuple[Path, Path]) -> None:
    """OB-CS-01 over TLS: the same checked REGISTER scenario over a TLS connection; the Path the
    server stores for it names transport=tls, so the server really saw a TLS flow."""
    relay = None
    if sipp_supports_tls(sipp_path):
        # sipp wants a certificate even as a client; the server does not ask for one
        run = Sipp(sipp_path, tmp_path, "register-tls", server.tls_port, "outbound_register.xml",
                   transport="l1", users=[("alice-tls", uuid_for(3))],
                   keys={"supported": OUTBOUND},
                   extra=["-tls_cert", str(tls_files[0]), "-tls_key", str(tls_files[1])])
    else:
        relay = TlsRelay(server.tls_port)
        run = Sipp(sipp_path, tmp_path, "register-tls", relay.port, "outbound_register.xml",
                   transport="t1", users=[("alice-tls", uuid_for(3))],
                   keys={"supported": OUTBOUND})
    try:
        rc = run.wait()
    finally:
        if relay is not None:
            relay.close()
    assert rc == 0, explain(server, run)
    assert "transport=tls" in run.messages().lower(), explain(server, run)


def test_register_without_supported_outbound_fails_the_require_check_OB_REG_11(
        server: ServerProcess, sipp_path: str, tmp_path: Path) -> None:
    """OB-REG-11 and a check on the checks: with `Supported: path` only the server (rightly)
    answers 200 without `Require: outbound`, and the same scenario must then FAIL on its Require
    check. This is what would catch a registrar that drops `Require: outbound`."""
    run = Sipp(sipp_path, tmp_path, "register-negative", server.port, "outbound_register.xml",
               transport="t1", users=[("dave-plain", uuid_for(4))], keys={"supported": "path"})
    rc = run.wait()
    errors = run.err.read_text(errors="replace") if run.err.exists() else ""
    assert rc != 0, "scenario passed without Require: outbound\n" + explain(server, run)
    assert "SIP/2.0 200 OK" in run.messages(), explain(server, run)
    assert "Require:" in errors and "regexp" in errors.lower(), explain(server, run)


# --------------------------------------------------------------------------------------------
# requests over the registered flow


def test_invite_reaches_callee_over_its_registered_tcp_flow_OB_REG_09_OB_CS_05(
        server: ServerProcess, sipp_path: str, tmp_path: Path) -> None:
    """OB-REG-09, OB-AP-05, OB-CS-05: bob registers over TCP with an unreachable Contact; a UDP
    caller's INVITE reaches him over that connection, and ACK and BYE, sent to the Record-Route
    route set with bob's Contact as Request-URI, reach him too. Both sipp runs exit 0."""
    callee = Sipp(sipp_path, tmp_path, "callee", server.port, "outbound_register.xml",
                  transport="t1", users=[("bob", uuid_for(5))], keys={"supported": OUTBOUND},
                  sets={"expect": "1"}, ooc="uas_invite.xml")
    try:
        registered = _wait_registered(callee)
        assert registered, explain(server, callee)
        caller = Sipp(sipp_path, tmp_path, "caller", server.port, "uac_invite.xml",
                      transport="u1", service="bob")
        caller_rc = caller.wait()
        callee_rc = callee.wait()
    finally:
        callee.kill()
    assert caller_rc == 0, explain(server, caller, callee)
    assert callee_rc == 0, explain(server, caller, callee)
    # the callee's side of the call came over its TCP flow (it has no other socket)
    got = callee.messages()
    assert "TCP message received" in got and "BYE sip:callee@192.0.2.1:5999" in got, \
        explain(server, caller, callee)


def test_message_reaches_receiver_over_its_registered_tcp_flow_OB_AP_05(
        server: ServerProcess, sipp_path: str, tmp_path: Path) -> None:
    """OB-AP-05: a MESSAGE from a UDP sender to carol, registered over TCP with an unreachable
    Contact, is delivered on carol's connection and her 200 gets back to the sender."""
    receiver = Sipp(sipp_path, tmp_path, "receiver", server.port, "outbound_register.xml",
                    transport="t1", users=[("carol", uuid_for(6))], keys={"supported": OUTBOUND},
                    sets={"expect": "1"}, ooc="uas_message.xml")
    try:
        assert _wait_registered(receiver), explain(server, receiver)
        sender = Sipp(sipp_path, tmp_path, "sender", server.port, "uac_message.xml",
                      transport="u1", service="carol")
        sender_rc = sender.wait()
        receiver_rc = receiver.wait()
    finally:
        receiver.kill()
    assert sender_rc == 0, explain(server, sender, receiver)
    assert receiver_rc == 0, explain(server, sender, receiver)


def _wait_registered(run: Sipp, timeout: float = 10) -> bool:
    """True once the registering sipp has received its 200 (seen in its message trace)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "Require: outbound" in run.messages():
            return True
        if run.proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False
