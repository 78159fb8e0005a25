"""``sipserver ctl``: a client of the management API (stdlib ``http.client``, no trio).

Invariants:
- ``run_ctl`` returns 0 when the API answered 2xx, 1 for every operational failure (server not
  reachable, HTTP error, bad answer), and prints failures as one line on stderr
  (``sipserver ctl: ...``), never a traceback.
- Output goes to ``sys.stdout`` as looked up at call time: aligned tables for people, or the
  API's JSON unchanged with ``--json`` for scripts.
- The address is taken from ``--mgmt``, else ``$SIPSERVER_MGMT``, else ``mgmt.listen`` of the
  ``-c`` config file, else ``DEFAULT_ADDRESS``; the token likewise from ``--token``,
  ``$SIPSERVER_MGMT_TOKEN`` or ``mgmt.token``. A wildcard listen address is reached on loopback.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from sipserver.config import ConfigError, load_config, parse_host_port

__all__ = ["DEFAULT_ADDRESS", "CtlError", "MgmtClient", "format_table", "run_ctl"]

DEFAULT_ADDRESS = "127.0.0.1:9060"
PROG = "sipserver ctl"


class CtlError(Exception):
    """Something the user has to fix or know; the message is printed as is."""


class MgmtClient:
    """One HTTP request per call against the management API."""

    def __init__(self, host: str, port: int, token: str = "", timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.timeout = timeout

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def request(
        self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None
    ) -> tuple[int, str, bytes]:
        """(status, content type, body); CtlError when the server cannot be reached."""
        if query:
            path += "?" + urlencode(query)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, resp.getheader("Content-Type", ""), payload
        except (OSError, http.client.HTTPException) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            raise CtlError(
                f"cannot reach the management API at {self.url}: {why} "
                "(is the server running with [mgmt] listen or --mgmt, and is the address right?)"
            ) from None
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None) -> Any:
        status, _ctype, payload = self.request(method, path, body, query)
        try:
            value = json.loads(payload) if payload else None
        except ValueError:
            value = None
        if not 200 <= status < 300:
            msg = value.get("error") if isinstance(value, dict) else None
            raise CtlError(f"{msg or payload[:200].decode('utf-8', 'replace') or 'request failed'} (HTTP {status})")
        if value is None:
            raise CtlError(f"the server sent an answer that is not JSON (HTTP {status})")
        return value


# ------------------------------------------------------------------------------ formatting

def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *cells]:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def duration(seconds: float | None) -> str:
    """``45s``, ``3m05s``, ``2h03m``, ``4d02h``: short enough for a table cell."""
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _counts(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")


# ------------------------------------------------------------------------------ commands

def _resolve(args: Any) -> MgmtClient:
    cfg = None
    config_path = getattr(args, "config", None)
    if config_path:
        try:
            cfg = load_config(config_path)
        except ConfigError as exc:
            raise CtlError(f"config error: {exc.describe()}") from None
    text = getattr(args, "mgmt", None) or os.environ.get("SIPSERVER_MGMT") or (cfg.mgmt.listen if cfg else "")
    if not text:
        if cfg is not None:
            raise CtlError(f"{config_path} has no [mgmt] listen: the management API is off there")
        text = DEFAULT_ADDRESS
    try:
        host, port = parse_host_port(text, allow_zero=False)
    except ConfigError as exc:
        raise CtlError(f"--mgmt: {exc}") from None
    if host == "0.0.0.0":
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    token = getattr(args, "token", None) or os.environ.get("SIPSERVER_MGMT_TOKEN") or (cfg.mgmt.token if cfg else "")
    timeout = getattr(args, "timeout", None) or 10.0
    return MgmtClient(host, port, token, timeout)


def _keepalive_text(state: dict[str, Any] | None) -> str | None:
    """Server-sent keepalives of an implicit UDP binding: next ping, unanswered count."""
    if not state:
        return None
    return f"next {duration(state['next_ping_in'])}, {state['unanswered']} unanswered"


def _registrations(client: MgmtClient, args: Any, as_json: bool) -> None:
    query = {"aor": args.aor} if args.aor else None
    data = client.json("GET", "/registrations", query=query)
    if as_json:
        _print(json.dumps(data, indent=1))
        return
    regs = data["registrations"]
    if not regs:
        _print("no registrations" + (f" for {args.aor}" if args.aor else ""))
        return
    rows = [
        [
            r["aor"], r["contact"], r["instance"], r["reg_id"], r["transport"], r["source"],
            duration(r["expires"]),
            (r["flow"] + ("" if r["flow_alive"] else " (gone)")) if r["flow"] else None,
            r.get("kind"),
            _keepalive_text(r.get("keepalive")),
            r["user_agent"],
        ]
        for r in regs
    ]
    headers = [
        "AOR", "CONTACT", "INSTANCE", "REG-ID", "TRANSPORT", "SOURCE", "EXPIRES", "FLOW", "KIND",
        "KEEPALIVE", "USER-AGENT",
    ]
    _print(format_table(headers, rows))


def _flows(client: MgmtClient, args: Any, as_json: bool) -> None:
    data = client.json("GET", "/flows")
    if as_json:
        _print(json.dumps(data, indent=1))
        return
    if not data["flows"]:
        _print("no flows")
        return
    rows = [
        [f["id"], f["transport"], f["peer"], duration(f["age"]), duration(f["idle"]),
         duration(f["last_keepalive"]) if f["last_keepalive"] is not None else None,
         f["bindings"], f["user"]]
        for f in data["flows"]
    ]
    _print(format_table(["ID", "TRANSPORT", "PEER", "AGE", "IDLE", "KEEPALIVE", "BINDINGS", "USER"], rows))


def _transactions(client: MgmtClient, args: Any, as_json: bool) -> None:
    data = client.json("GET", "/transactions")
    if as_json:
        _print(json.dumps(data, indent=1))
        return
    _print(f"{data['count']} transactions in flight")
    if data["transactions"]:
        rows = [[t["kind"], t["method"], t["state"], t["call_id"], t["flow"]] for t in data["transactions"]]
        _print(format_table(["KIND", "METHOD", "STATE", "CALL-ID", "FLOW"], rows))


def _media(client: MgmtClient, args: Any, as_json: bool) -> None:
    """Issue 18: calls anchored through rtpengine."""
    data = client.json("GET", "/media")
    if as_json:
        _print(json.dumps(data, indent=1))
        return
    if not data["enabled"]:
        _print("media anchoring is off (no [media] rtpengine configured, or anchor = never)")
        return
    _print(f"{data['active']} anchored calls ({data['count']} kept); rtpengine {' '.join(data['rtpengine'])}")
    if data["calls"]:
        rows = [
            [c["call_id"], c["caller"], "anchored" if c["anchored"] else "pending",
             "answered" if c["confirmed"] else "setup", f"{c['anchored_branches']}/{c['branches']}",
             c["late_offer"], c["rtpengine"], duration(c["age"])]
            for c in data["calls"]
        ]
        _print(format_table(["CALL-ID", "CALLER", "MEDIA", "STATE", "BRANCHES", "LATE-OFFER", "RTPENGINE", "AGE"], rows))


def _cluster(client: MgmtClient, args: Any, as_json: bool) -> None:
    """Issue 20: the nodes of the cluster as this node sees them."""
    data = client.json("GET", "/cluster")
    if as_json:
        _print(json.dumps(data, indent=1))
        return
    if not data["enabled"]:
        _print("this server is not a cluster node (no [cluster] node_id configured)")
        return
    _print(f"node {data['node']}; Redis {data['redis']}; {data['unowned_bindings']} bindings held by no node")
    rows = [
        [n["node"] + (" (this node)" if n["self"] else ""), "alive" if n["alive"] else "dead", n["address"] or "-",
         n.get("pid") or "-", n["bindings"]]
        for n in data["nodes"]
    ]
    _print(format_table(["NODE", "STATE", "ADDRESS", "PID", "BINDINGS"], rows))


def _info(client: MgmtClient, args: Any, as_json: bool) -> None:
    data = client.json("GET", "/info")
    if as_json:
        _print(json.dumps(data, indent=1))
        return
    rows = [
        ["version", data["version"]],
        ["pid", data["pid"]],
        ["uptime", duration(data["uptime"])],
        ["listeners", " ".join(data["listeners"])],
        ["domains", " ".join(data["domains"])],
        ["auth", data["auth"]],
        ["store", data["store"]],
        ["code", data.get("code", "?")],
    ]
    _print(format_table(["KEY", "VALUE"], rows))


def _stats(client: MgmtClient, args: Any, as_json: bool) -> None:
    data = client.json("GET", "/stats")
    if as_json:
        _print(json.dumps(data, indent=1))
        return
    counters = data["counters"]
    requests = {k[len("requests_"):]: v for k, v in counters.items() if k.startswith("requests_")}
    others = {k: v for k, v in counters.items() if not k.startswith("requests_")}
    avg = data["processing_seconds_avg"]
    rows = [
        ["version", data["version"]],
        ["uptime", duration(data["uptime"])],
        ["listeners", " ".join(data["listeners"])],
        ["registrations", f"{data['registrations']} ({data['aors']} AoRs)"],
        ["flows", _counts(data["flows"])],
        ["transactions", data["transactions"]],
        ["requests", _counts(requests)],
        ["responses", _counts(data["responses"])],
        ["flows closed", _counts(data["flows_closed"])],
        ["flow failures", _counts(data["flow_failures"])],
        ["failovers", _counts(data["failovers"])],
        ["keepalives", data["keepalives"]],
        ["messages", data["messages"]],
        ["avg processing", f"{avg * 1000:.3f} ms" if avg is not None else None],
        ["event loop lag", f"{data['event_loop_lag'] * 1000:.1f} ms"],
    ]
    rows += [[k.replace("_", " "), v] for k, v in others.items()]
    trace = data["trace"]
    if trace["sources"] or trace["aors"]:
        rows.append(["tracing", " ".join(trace["sources"] + trace["aors"])])
    _print(format_table(["KEY", "VALUE"], rows))


def _unregister(client: MgmtClient, args: Any, as_json: bool) -> None:
    data = client.json("DELETE", "/registrations/" + quote(args.aor, safe="@"))
    _print(json.dumps(data, indent=1) if as_json else f"{data['aor']}: removed {data['removed']} binding(s)")


def _close_flow(client: MgmtClient, args: Any, as_json: bool) -> None:
    data = client.json("POST", "/flows/close", query={"id": args.id})
    if as_json:
        _print(json.dumps(data, indent=1))
    else:
        _print(f"closed {data['closed']} ({data['bindings_removed']} binding(s) removed)")


def _reload(client: MgmtClient, args: Any, as_json: bool) -> None:
    data = client.json("POST", "/credentials/reload")
    _print(json.dumps(data, indent=1) if as_json else f"credentials reloaded from {data['file']}: {data['users']} users")


def _trace(client: MgmtClient, args: Any, as_json: bool) -> None:
    if args.action == "show":
        if args.source or args.aor:
            raise CtlError("trace show takes no --source/--aor (use trace on|off)")
        data = client.json("GET", "/trace")
    else:
        if args.action == "on" and not (args.source or args.aor):
            raise CtlError("trace on needs --source IP and/or --aor USER@HOST")
        body = {"source": args.source, "aor": args.aor, "enabled": args.action == "on"}
        data = client.json("POST", "/trace", body=body)
    if as_json:
        _print(json.dumps(data, indent=1))
        return
    if not data["sources"] and not data["aors"]:
        _print("tracing is off")
        return
    for s in data["sources"]:
        _print(f"tracing source {s}")
    for a in data["aors"]:
        _print(f"tracing aor {a}")


def _metrics(client: MgmtClient, args: Any, as_json: bool) -> None:
    status, _ctype, payload = client.request("GET", "/metrics")
    if status != 200:
        raise CtlError(f"metrics not available (HTTP {status})")
    sys.stdout.write(payload.decode("utf-8", "replace"))


COMMANDS = {
    "info": _info,
    "stats": _stats,
    "registrations": _registrations,
    "flows": _flows,
    "transactions": _transactions,
    "media": _media,
    "cluster": _cluster,
    "unregister": _unregister,
    "close-flow": _close_flow,
    "reload": _reload,
    "trace": _trace,
    "metrics": _metrics,
}


def run_ctl(args: Any) -> int:
    """Run the parsed ``sipserver ctl`` command; see the module docstring for exit codes."""
    try:
        client = _resolve(args)
        COMMANDS[args.ctl_command](client, args, bool(getattr(args, "json", False)))
    except CtlError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    except (KeyError, TypeError, ValueError) as exc:  # an answer missing fields: version skew
        sys.stderr.write(f"{PROG}: unexpected answer from the server: {exc!r}\n")
        return 1
    sys.stdout.flush()
    return 0
