"""The shipped examples work as documented (issue: operability).

Every ``examples/*.toml`` passes ``sipserver check-config``; each example configures what its
header promises; the systemd unit runs commands the CLI accepts; docs/operations.md names every
endpoint of the management API."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sipserver import cli
from sipserver.config import load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TOMLS = sorted(EXAMPLES.glob("*.toml"))


def test_the_documented_examples_exist() -> None:
    names = {p.name for p in TOMLS}
    assert {"office.toml", "webrtc.toml", "nat-edge.toml"} <= names


@pytest.mark.parametrize("path", TOMLS, ids=lambda p: p.name)
def test_check_config_passes(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", str(path)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == f"{path}: OK\n"


def test_office_has_udp_tcp_tls_users_and_sqlite() -> None:
    cfg = load_config(EXAMPLES / "office.toml")
    assert {s.transport for s in cfg.server.listen} == {"udp", "tcp", "tls"}
    assert cfg.users and cfg.auth_enabled
    assert cfg.store.backend == "sqlite"
    assert cfg.mgmt.address is not None and cfg.mgmt.address[0] == "127.0.0.1"


def test_webrtc_is_a_wss_gateway() -> None:
    cfg = load_config(EXAMPLES / "webrtc.toml")
    wss = [s for s in cfg.server.listen if s.transport == "wss"]
    assert wss and wss[0].path == "/ws"
    assert cfg.tls.cert.endswith(".pem") and cfg.tls.key.endswith(".pem")
    assert cfg.server.advertise  # browsers check the certificate name
    # The web phone pings every 25 s: that must fit in the flow timer (RFC 5626 §4.4.1).
    script = (EXAMPLES / "webphone" / "webphone.js").read_text()
    ping = int(re.search(r"KEEPALIVE_SECONDS = (\d+)", script).group(1))  # type: ignore[union-attr]
    assert ping < cfg.registrar.flow_timer


def test_webrtc_gateway_anchors_through_rtpengine() -> None:
    """Issue 18: browsers on wss, phones on UDP/TCP/TLS, rtpengine configured and auto."""
    cfg = load_config(EXAMPLES / "webrtc-gateway.toml")
    assert {s.transport for s in cfg.server.listen} >= {"wss", "udp", "tcp"}
    assert cfg.media.enabled and cfg.media.anchor == "auto" and cfg.media.rtpengine
    assert cfg.proxy.record_route  # the BYE must pass: it deletes the rtpengine call
    assert cfg.mgmt.address is not None  # sipserver ctl media


def test_nat_edge_uses_a_short_flow_timer() -> None:
    cfg = load_config(EXAMPLES / "nat-edge.toml")
    assert cfg.registrar.flow_timer <= 30
    assert cfg.proxy.keepalive_grace <= 15
    assert not cfg.registrar.outbound_without_first_hop


def test_systemd_unit_runs_valid_commands() -> None:
    unit = (EXAMPLES / "sipserver.service").read_text()
    lines = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    parser = cli._build_parser()
    for key in ("ExecStartPre", "ExecStart"):
        argv = shlex.split(lines[key])
        assert Path(argv[0]).name == "sipserver"
        args = parser.parse_args(argv[1:])  # raises SystemExit on a bad command line
        assert args.command in ("run", "check-config")
    assert lines["ExecReload"].endswith("kill -HUP $MAINPID")  # SIGHUP re-reads credentials
    # The unit's state directory is the data_dir of the examples that keep state on disk.
    assert lines["StateDirectory"] == "sipserver"
    assert load_config(EXAMPLES / "office.toml").server.data_dir == "/var/lib/sipserver"


def test_webphone_page_loads_its_script_and_sipjs_relatively() -> None:
    page = (EXAMPLES / "webphone" / "index.html").read_text()
    assert '<script type="module" src="webphone.js">' in page
    script = (EXAMPLES / "webphone" / "webphone.js").read_text()
    assert 'from "./sip.js/lib/index.js"' in script
    assert "regId: 1" in script and "instanceId" in script  # SIP Outbound (RFC 5626 §4.2)


def test_operations_doc_lists_every_endpoint() -> None:
    from sipserver.mgmt.api import ManagementApi

    class Stub:
        class cfg:  # noqa: N801 - stands in for Config
            class mgmt:  # noqa: N801
                token = ""

    doc = (ROOT / "docs" / "operations.md").read_text()
    for path, methods in ManagementApi(Stub()).routes.items():
        for method in methods:
            assert re.search(rf"{method}[^|\n]*`?{re.escape(path)}[`?\[]", doc) or (
                path == "/" and "`GET /`" in doc
            ), f"{method} {path} undocumented"


def test_cluster_examples_are_two_nodes_of_one_cluster() -> None:
    """Issue 20: the docs' two-node example: same Redis, key prefix and flow-token key, own names
    and addresses."""
    a = load_config(EXAMPLES / "cluster-a.toml")
    b = load_config(EXAMPLES / "cluster-b.toml")
    for cfg in (a, b):
        assert cfg.store.backend == "redis" and cfg.cluster.enabled
    assert (a.store.redis_url, a.store.redis_key_prefix, a.outbound.secret) == (
        b.store.redis_url, b.store.redis_key_prefix, b.outbound.secret)
    assert a.cluster.node_id != b.cluster.node_id and a.cluster.address != b.cluster.address
    assert a.cluster.heartbeat_ttl > a.cluster.heartbeat_interval
