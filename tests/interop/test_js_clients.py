"""Interop: the browser SIP stacks JsSIP and SIP.js, run under Node, against the real server over
WebSocket (RFC 7118) with SIP Outbound (RFC 5626).

Each test starts `sipserver run` on free ports, runs one script from tests/interop/js/ with node
and asserts on the JSON object the script prints on stdout as `RESULT {...}`. The scripts need
`npm ci` in tests/interop/js (exact versions pinned in package.json / package-lock.json); without
node or node_modules the tests skip on a developer machine and fail under CI=true.

Invariants: every subprocess runs with a timeout, so a hung client fails the test instead of the
run; on failure pytest shows the script's stdout/stderr and the server log (printed, captured).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serverproc import ServerProcess, in_ci, require_tool

pytestmark = pytest.mark.interop

JS_DIR = Path(__file__).resolve().parent / "js"
JS_PACKAGES = ("jssip", "sip.js", "ws")
SCRIPT_TIMEOUT = 25.0  # seconds; each script has its own shorter watchdog (--timeout)

USERS_TOML = """
[users.alice]
password = "secret"

[users.bob]
password = "hunter2"
"""


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with the pinned packages installed next to the scripts."""
    exe = require_tool("node", "install Node.js >= 20, then run `npm ci` in tests/interop/js")
    missing = [
        p for p in JS_PACKAGES if not (JS_DIR / "node_modules" / p / "package.json").is_file()
    ]
    if missing:
        msg = f"run `npm ci` in {JS_DIR} (missing node_modules for: {', '.join(missing)})"
        if in_ci():
            pytest.fail(f"interop packages missing in CI: {msg}")
        pytest.skip(msg)
    return exe


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: start one server (optionally with a TOML config); stopped and its log printed
    (shown by pytest only when the test fails) at teardown."""
    servers: list[ServerProcess] = []

    def start(config: str = "") -> ServerProcess:
        srv = ServerProcess(tmp_path, config=config)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()  # closes the log file; read it afterwards so shutdown errors show too
        print(f"----- server log ({srv.log_path}) -----")
        print(srv.log_path.read_text(errors="replace"))


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def run_script(node: str, server: ServerProcess, script: str, *args: str) -> dict[str, Any]:
    """Run `node js/SCRIPT --ws URL ARGS...` and return the JSON of its `RESULT {...}` line."""
    cmd = [
        node,
        str(JS_DIR / script),
        "--ws",
        f"ws://127.0.0.1:{server.ws_port}",
        "--timeout",
        "15",
        *args,
    ]
    try:
        proc = subprocess.run(
            cmd, cwd=JS_DIR, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        # TimeoutExpired carries bytes even with text=True.
        out, err = (_text(exc.stdout), _text(exc.stderr))
        print(f"----- {script} stdout -----\n{out}\n----- {script} stderr -----\n{err}")
        pytest.fail(f"{script} did not finish within {SCRIPT_TIMEOUT}s")
    print(f"----- {script} {' '.join(args)} (rc={proc.returncode}) stdout -----\n{proc.stdout}")
    print(f"----- {script} stderr -----\n{proc.stderr}")
    results = [
        line[len("RESULT ") :] for line in proc.stdout.splitlines() if line.startswith("RESULT ")
    ]
    assert proc.returncode == 0 and len(results) == 1, (
        f"{script} failed (rc={proc.returncode}) or gave no RESULT line"
    )
    report: dict[str, Any] = json.loads(results[0])
    print(f"----- {script} report -----\n{json.dumps(report, indent=2)}")
    return report


def assert_server_healthy(server: ServerProcess) -> None:
    """No exception escaped into the server log while the clients ran."""
    log = server.output()
    assert "Traceback" not in log, "server logged an exception"
    assert server.proc.poll() is None, "server exited"


def assert_register_asked_for_outbound(report: dict[str, Any]) -> None:
    """The library's REGISTER was an outbound one (RFC 5626 §4.2.1): reg-id, +sip.instance and
    `outbound` in Supported; otherwise the test would not exercise outbound at all."""
    register = report["register"]
    assert register is not None, "the library sent no REGISTER"
    contact = " ".join(register["contact"])
    assert "reg-id=1" in contact
    assert f'+sip.instance="<urn:uuid:{report["instance"]}>"' in contact
    supported = {t.strip().lower() for v in register["supported"] for t in v.split(",")}
    assert "outbound" in supported


def assert_outbound_registered(report: dict[str, Any]) -> None:
    """200 OK with `Require: outbound` (OB-REG-10) echoing the instance and reg-id (OB-REG-15)."""
    assert report["ok"] is True, f"registration failed: {report}"
    assert report["status"] == 200
    assert "outbound" in report["response_require"], (
        "2xx to an outbound REGISTER lacks Require: outbound"
    )
    echoed = [c for c in report["response_contact"] if report["instance"] in c]
    assert echoed, "200 OK does not list the registered instance's Contact"
    assert "reg-id=1" in echoed[0]
    assert "expires=" in echoed[0]


def test_jssip_registers_over_ws_with_outbound_ob_reg_10(
    node: str, start_server: Callable[..., ServerProcess]
) -> None:
    """OB-REG-10, OB-REG-15, WS-01: JsSIP's outbound REGISTER over WebSocket gets 200 OK with
    Require: outbound, and JsSIP itself accepts the response (its `registered` event fires)."""
    server = start_server()
    report = run_script(node, server, "jssip_register.mjs", "--user", "alice")
    assert report["library"] == "jssip"
    assert_register_asked_for_outbound(report)
    assert_outbound_registered(report)
    assert report["registers_sent"] == 1, "JsSIP needed more than one REGISTER without auth"
    assert_server_healthy(server)


def test_sipjs_registers_over_ws_with_outbound_ob_reg_10(
    node: str, start_server: Callable[..., ServerProcess]
) -> None:
    """OB-REG-10, OB-REG-15, WS-01: SIP.js (UserAgent + Registerer with instanceId/regId)
    registers over WebSocket; 200 OK carries Require: outbound and the Registerer reaches
    Registered (it found its own Contact with an expires value in the response)."""
    server = start_server()
    report = run_script(node, server, "sipjs_register.mjs", "--user", "carol")
    assert report["library"] == "sip.js"
    assert_register_asked_for_outbound(report)
    assert_outbound_registered(report)
    assert report["registered_state"] == "Registered"
    assert_server_healthy(server)


def test_jssip_and_sipjs_exchange_message_both_ways_ob_reg_09(
    node: str, start_server: Callable[..., ServerProcess]
) -> None:
    """OB-REG-09, OB-AP-05, WS-06, GRUU-04: a MESSAGE to each AOR reaches the browser client over
    the WebSocket it registered on (its Contact host is .invalid, so only the flow can reach it);
    so does a MESSAGE to the public GRUU the server handed out in the 200 OK."""
    server = start_server()
    report = run_script(node, server, "message_exchange.mjs", "--user", "alice", "--peer", "bob")
    assert report["jssip"]["registered"] == 200
    assert report["sipjs"]["registered"] == 200
    texts = report["texts"]
    # alice (JsSIP) -> bob (SIP.js), first to the AOR, then to bob's public GRUU
    assert report["jssip"]["sent"]["status"] == 200, report["jssip"]["sent"]
    assert report["gruu"]["target"], "SIP.js found no pub-gruu in its 200 OK"
    assert report["gruu"]["sent"]["status"] == 200, report["gruu"]
    bob_got = report["sipjs"]["received"]
    assert [m["body"] for m in bob_got] == [texts["to_peer"], texts["to_gruu"]]
    assert {m["from"] for m in bob_got} == {"sip:alice@example.com"}
    # bob (SIP.js) -> alice (JsSIP)
    assert report["sipjs"]["sent"]["status"] == 200, report["sipjs"]["sent"]
    assert [m["body"] for m in report["jssip"]["received"]] == [texts["to_user"]]
    assert report["jssip"]["received"][0]["from"] == "sip:bob@example.com"
    assert report["ok"] is True
    assert_server_healthy(server)


def test_cut_websocket_removes_binding_message_fails_fast_ob_reg_16(
    node: str, start_server: Callable[..., ServerProcess]
) -> None:
    """OB-REG-16, OB-CS-09, WS-09: bob's WebSocket dies without a close frame or un-REGISTER;
    a MESSAGE to bob then fails at once with 480/404 instead of hanging on a dead flow."""
    server = start_server()
    report = run_script(
        node, server, "flow_cut.mjs", "--user", "alice", "--peer", "bob", "--settle-ms", "300"
    )
    assert report["peer_registered"] == 200
    assert report["caller_registered"] == 200
    assert report["peer_registers_sent"] == 1 and report["peer_unregisters_sent"] == 0, (
        "bob unregistered: not a cut flow"
    )
    message = report["message"]
    assert message is not None, "MESSAGE never completed"
    assert message["ok"] is False, "MESSAGE to a dead flow succeeded"
    assert message["status"] in (404, 480), message
    assert message["ms"] < 3000, (
        f"failure took {message['ms']} ms: the server waited on a dead flow"
    )
    assert_server_healthy(server)


def test_sipjs_crlf_keepalives_answered_over_ws_ob_cs_08(
    node: str, start_server: Callable[..., ServerProcess]
) -> None:
    """OB-CS-08, OB-KA-01, WS-07: SIP.js's double-CRLF keep-alives on its WebSocket each get a
    CRLF pong, and the flow still delivers SIP afterwards (the pings never reach the parser as
    a broken message)."""
    server = start_server()
    report = run_script(
        node, server, "sipjs_keepalive.mjs", "--user", "dave", "--peer", "erin", "--pings", "3"
    )
    assert report["registered"] == 200
    assert report["pings"] >= 3
    assert report["pongs"] >= 3, f"{report['pings']} pings, only {report['pongs']} pongs"
    assert report["message"]["status"] == 200, report["message"]
    assert [m["body"] for m in report["received"]] == [f"still there after {report['pings']} pings"]
    assert_server_healthy(server)


@pytest.mark.parametrize("script", ["jssip_register.mjs", "sipjs_register.mjs"])
def test_digest_md5_register_right_password_reg3261_03(
    node: str, start_server: Callable[..., ServerProcess], script: str
) -> None:
    """REG3261-03: with users configured the first REGISTER is challenged (401); the library
    answers with MD5 digest (the algorithm both support) and the retry gets 200 + outbound."""
    server = start_server(USERS_TOML)
    report = run_script(node, server, script, "--user", "alice", "--password", "secret")
    assert_outbound_registered(report)
    assert report["registers_sent"] == 2, "expected one challenge then an authenticated REGISTER"
    authorization = " ".join(report["register"]["authorization"])
    assert 'username="alice"' in authorization
    assert "algorithm=MD5" in authorization
    assert_server_healthy(server)


@pytest.mark.parametrize("script", ["jssip_register.mjs", "sipjs_register.mjs"])
def test_digest_register_wrong_password_fails_reg3261_03(
    node: str, start_server: Callable[..., ServerProcess], script: str
) -> None:
    """REG3261-03: a wrong password is refused: the library gives up with a final 401/403 and
    reports a failed registration (JsSIP: registrationFailed)."""
    server = start_server(USERS_TOML)
    report = run_script(node, server, script, "--user", "bob", "--password", "not-hunter2")
    assert report["ok"] is False, f"registration with a wrong password succeeded: {report}"
    assert report["status"] in (401, 403), report
    assert report["registers_sent"] >= 2, "the library never tried its credentials"
    if report["library"] == "jssip":
        assert report["cause"] == "Authentication Error"
    assert_server_healthy(server)
