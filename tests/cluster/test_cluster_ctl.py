"""Issue 20: ``sipserver ctl cluster`` shows an operator the nodes as one node sees them: which
is this node, which are alive or dead, their addresses and how many bindings each one's flows
hold; ``--json`` gives the same as ``GET /cluster``."""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import time
from pathlib import Path

import trio
from nodes import Node, node_pair, tcp_phone
from redis_fixture import RedisServer

from sipserver import cli


def ctl(node: Node, *args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["ctl", "--mgmt", f"127.0.0.1:{node.mgmt_port}", *args]) == 0
    return out.getvalue()


def row(table: str, first: str) -> list[str]:
    """The cells of the table line whose first cell is ``first``."""
    for line in table.splitlines():
        cells = [c for c in line.split("  ") if c.strip()]
        if cells and cells[0].strip() == first:
            return [c.strip() for c in cells]
    raise AssertionError(f"no row {first!r} in:\n{table}")


async def test_ctl_cluster_lists_nodes_liveness_and_bindings(redis_server: RedisServer, tmp_path: Path) -> None:
    with node_pair(redis_server, tmp_path) as (a, b):
        phone = await tcp_phone(f"ctl-{secrets.token_hex(3)}", b)
        await phone.register()
        with trio.fail_after(3):
            while not a.registrations(phone.aor):
                await trio.sleep(0.02)
        table = await trio.to_thread.run_sync(ctl, a, "cluster")
        assert table.splitlines()[0].startswith("node a; Redis ok; 0 bindings held by no node")
        assert row(table, "a (this node)")[1:2] == ["alive"] and row(table, "a (this node)")[-1] == "0"
        b_row = row(table, "b")
        assert b_row[1] == "alive" and b_row[2] == f"sip:127.0.0.1:{b.tcp_port};transport=tcp" and b_row[-1] == "1"
        data = json.loads(await trio.to_thread.run_sync(ctl, a, "cluster", "--json"))
        assert {n["node"]: (n["alive"], n["bindings"]) for n in data["nodes"]} == {"a": (True, 0), "b": (True, 1)}

        b.kill()
        deadline = time.monotonic() + 5
        while True:
            table = await trio.to_thread.run_sync(ctl, a, "cluster")
            if row(table, "b")[1] == "dead":
                break
            assert time.monotonic() < deadline, f"b never shown dead:\n{table}"
            await trio.sleep(0.1)
        assert row(table, "b")[-1] == "0"  # its flows' bindings were removed with it
