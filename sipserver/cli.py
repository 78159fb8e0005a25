"""The ``sipserver`` command: run | check-config | passwd | ctl.

Invariants:
- ``main`` returns an exit code and never lets argparse's ``SystemExit`` escape, so tests and the
  console script treat it alike: 0 success, 1 operational failure, 2 usage or config error.
- A ConfigError is reported as one line on stderr (``sipserver: config error: ...``), never as a
  traceback; it is raised before the runtime is imported, so bad config fails fast and cheaply.
- Heavy or not-yet-present modules (``sipserver.service`` and the runtime behind it, ``sipserver.auth.credentials``) are
  imported inside the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from sipserver import __version__, native
from sipserver.config import (
    Config,
    ConfigError,
    apply_overrides,
    default_config,
    load_config,
)

__all__ = ["main", "setup_logging"]

PROG = "sipserver"
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# --------------------------------------------------------------------------------------------
# Logging

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(
    logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None).__dict__
) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}


def _utc(created: float, millis: bool) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    if millis:
        stamp += f".{int(created * 1000) % 1000:03d}"
    return stamp + "Z"


class TextFormatter(logging.Formatter):
    """``2026-11-22T10:00:00Z INFO sipserver.x: message key=value``, times in UTC."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record.created, False)} {record.levelname} {record.name}: "
        line += record.getMessage()
        for key, value in _extras(record).items():
            line += f" {key}={value}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` plus extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _utc(record.created, True),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            obj.setdefault(key, value)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        # str() for values JSON cannot hold (Flow, Path, ...): a log line must never fail.
        return json.dumps(obj, default=str, ensure_ascii=False)


class _Handler(logging.StreamHandler[TextIO]):
    """Marks the handler setup_logging installed, so a second call replaces it."""


class _WorkerField(logging.Filter):
    """Adds ``worker=I`` to every record of worker I (the workers share stderr)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def setup_logging(level: str, fmt: str, *, worker: int | None = None) -> None:
    """Send log records at ``level`` and above to stderr as text or JSON lines; in worker
    ``worker`` of ``run --workers N``, each line carries ``worker=I``.

    Calling it again replaces the earlier handler instead of adding a second one. Raises
    ValueError for an unknown level or format.
    """
    if level not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    handler = _Handler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if worker is not None:
        handler.addFilter(_WorkerField(worker))
    root.addHandler(handler)
    root.setLevel(LOG_LEVELS[level])


# --------------------------------------------------------------------------------------------
# Argument parsing


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="SIP Outbound (RFC 5626) edge proxy and registrar.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}; {native.status()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the server", description="Run the server.")
    run.add_argument("-c", "--config", metavar="FILE", help="TOML config file (default: none)")
    run.add_argument(
        "--listen",
        metavar="SPEC",
        action="append",
        help="listen on TRANSPORT:HOST:PORT[/PATH]; repeatable; replaces server.listen",
    )
    run.add_argument(
        "--domain",
        metavar="NAME",
        action="append",
        help="serve this domain; repeatable; replaces server.domains",
    )
    run.add_argument("--data-dir", metavar="DIR", help="sets server.data_dir")
    run.add_argument(
        "--log-level",
        type=str.lower,
        choices=list(LOG_LEVELS),
        help="sets server.log_level",
    )
    run.add_argument("--log-format", choices=["text", "json"], help="sets server.log_format")
    run.add_argument("--mgmt", metavar="HOST:PORT", help="sets mgmt.listen")
    run.add_argument(
        "--workers",
        metavar="N",
        type=_worker_count,
        default=1,
        help="run N processes sharing the listen ports, each a cluster node (needs "
        'store.backend = "redis"; docs/workers.md); default 1',
    )

    check = sub.add_parser(
        "check-config",
        help="validate a config file",
        description="Load and validate a config file without starting anything.",
    )
    check.add_argument("file", metavar="FILE")

    passwd = sub.add_parser(
        "passwd",
        help="set a user's password in the credentials file",
        description="Write digest HA1 entries for USER to the credentials file.",
    )
    passwd.add_argument("user", metavar="USER")
    passwd.add_argument(
        "-c", "--config", metavar="FILE", help="take auth.credentials_file and auth.realm from here"
    )
    passwd.add_argument("--credentials-file", metavar="PATH", help="credentials file to update")
    passwd.add_argument("--realm", metavar="REALM", help="digest realm (default: auth.realm)")
    passwd.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from one line of standard input instead of prompting",
    )

    _add_ctl(sub)
    return parser


def _worker_count(text: str) -> int:
    from sipserver.workers import MAX_WORKERS

    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be a number from 1 to {MAX_WORKERS}, not {text!r}")
    return count


def _add_ctl(sub: Any) -> None:
    """``sipserver ctl [options] COMMAND``; the options work before or after COMMAND."""
    # SUPPRESS: a value given on either level survives, an absent one leaves no attribute.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--mgmt",
        metavar="HOST:PORT",
        default=argparse.SUPPRESS,
        help="management API address (default: $SIPSERVER_MGMT, mgmt.listen of -c FILE, "
        "or 127.0.0.1:9060)",
    )
    common.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help="bearer token (default: $SIPSERVER_MGMT_TOKEN or mgmt.token of -c FILE)",
    )
    common.add_argument(
        "-c", "--config", metavar="FILE", default=argparse.SUPPRESS, help="read [mgmt] from here"
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the API's JSON"
    )
    common.add_argument(
        "--timeout", type=float, metavar="SECONDS", default=argparse.SUPPRESS, help="default 10"
    )
    ctl = sub.add_parser(
        "ctl",
        parents=[common],
        help="talk to a running server's management API",
        description="Query and control a running server through its management API "
        "([mgmt] listen or run --mgmt).",
    )
    cmds = ctl.add_subparsers(dest="ctl_command", metavar="COMMAND")

    def add(name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = cmds.add_parser(
            name, parents=[common], help=text, description=text
        )
        return parser

    add("info", "version, listeners, uptime")
    add("stats", "counters and gauges")
    add("registrations", "list registered contacts").add_argument(
        "aor", metavar="AOR", nargs="?", help="only this address of record (user@host)"
    )
    add("flows", "list live flows (connections, UDP peers)")
    add("transactions", "count and list transactions in flight")
    add("media", "list calls anchored through rtpengine (issue 18)")
    add("cluster", "the cluster's nodes, their liveness and bindings per node (issue 20)")
    add("unregister", "remove every binding of an address of record").add_argument(
        "aor", metavar="AOR", help="user@host"
    )
    add("close-flow", "close a flow; its bindings go with it").add_argument(
        "id", metavar="ID", help="flow id as listed by `ctl flows`"
    )
    add("reload", "re-read auth.credentials_file")
    trace = add("trace", "switch full SIP message tracing on or off, or show it")
    trace.add_argument("action", choices=["on", "off", "show"], nargs="?", default="show")
    trace.add_argument("--source", metavar="IP", help="messages from/to this IP address")
    trace.add_argument("--aor", metavar="AOR", help="messages whose From, To or R-URI is user@host")
    add("metrics", "print the Prometheus metrics text")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sipserver`` console script; returns the exit code."""
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command == "run":
        return _cmd_run(args, argv)
    if args.command == "check-config":
        return _cmd_check_config(args)
    if args.command == "passwd":
        return _cmd_passwd(args)
    if args.command == "ctl":
        return _cmd_ctl(args)
    parser.print_usage(sys.stderr)
    print(f"{PROG}: error: a command is required (run, check-config, passwd, ctl)", file=sys.stderr)
    return 2


def _cmd_ctl(args: argparse.Namespace) -> int:
    if not args.ctl_command:
        print(
            f"{PROG} ctl: a command is required (info, stats, registrations, flows, "
            "transactions, media, cluster, unregister, close-flow, reload, trace, metrics)",
            file=sys.stderr,
        )
        return 2
    from sipserver.mgmt.ctl import run_ctl  # lazy: only ctl needs the HTTP client

    return run_ctl(args)


def _config_error(exc: ConfigError) -> int:
    print(f"{PROG}: config error: {exc.describe()}", file=sys.stderr)
    return 2


def _cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    try:
        cfg = load_config(args.config) if args.config else default_config()
        cfg = apply_overrides(
            cfg,
            listen=args.listen,
            domains=args.domain,
            data_dir=args.data_dir,
            log_level=args.log_level,
            log_format=args.log_format,
            mgmt=args.mgmt,
        )
    except ConfigError as exc:
        return _config_error(exc)
    # --workers N: this process supervises N workers, which run the same command line with
    # SIPSERVER_WORKER set (sipserver.workers); a worker is a server with a few settings changed.
    worker = os.environ.pop("SIPSERVER_WORKER", "")  # popped: a child of the worker is none
    if worker:
        from sipserver import workers

        try:
            slot = workers.WorkerSlot.parse(worker)
            setup_logging(cfg.server.log_level, cfg.server.log_format, worker=slot.index)
            cfg = workers.become_worker(cfg, slot, os.environ.pop(workers.FDS_ENV, ""))
        except ValueError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
    elif args.workers > 1:
        from sipserver import workers

        reason = workers.refusal(cfg, args.workers)
        if reason is not None:
            print(f"{PROG}: {reason}", file=sys.stderr)
            return 2
        setup_logging(cfg.server.log_level, cfg.server.log_format)
        return workers.supervise(cfg, args.workers, argv)
    else:
        setup_logging(cfg.server.log_level, cfg.server.log_format)
    # Lazy: only a valid config gets this far, and check-config/passwd never load trio.
    run: Callable[[Config], int] = importlib.import_module("sipserver.service").run
    try:
        return run(cfg)
    except KeyboardInterrupt:
        return 130


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        load_config(args.file)
    except ConfigError as exc:
        print(exc.describe() if exc.source else f"{args.file}: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file}: OK")
    return 0


def _read_password(user: str, from_stdin: bool) -> str | None:
    """The new password, or None after printing why there is none."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        try:
            password = getpass.getpass(f"Password for {user}: ")
            again = getpass.getpass("Repeat password: ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            print(f"{PROG} passwd: aborted", file=sys.stderr)
            return None
        if password != again:
            print(f"{PROG} passwd: passwords do not match", file=sys.stderr)
            return None
    if not password:
        print(f"{PROG} passwd: empty password refused", file=sys.stderr)
        return None
    return password


def _cmd_passwd(args: argparse.Namespace) -> int:
    cfg: Config | None = None
    if args.config:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            return _config_error(exc)
    path = args.credentials_file or (cfg.auth.credentials_file if cfg else "")
    if not path:
        print(
            f"{PROG} passwd: no credentials file: pass --credentials-file PATH, "
            "or -c FILE with auth.credentials_file set",
            file=sys.stderr,
        )
        return 2
    realm = args.realm or (cfg.auth.realm if cfg else "")
    if not realm:
        print(
            f"{PROG} passwd: no realm: pass --realm REALM (or set auth.realm in the config)",
            file=sys.stderr,
        )
        return 2
    password = _read_password(args.user, args.password_stdin)
    if password is None:
        return 1
    from sipserver.auth.credentials import write_user  # lazy: only passwd needs it

    try:
        write_user(Path(path), args.user, realm, password)
    except (OSError, ValueError) as exc:
        print(f"{PROG} passwd: cannot update {path}: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: set password of {args.user} for realm {realm}")
    return 0
