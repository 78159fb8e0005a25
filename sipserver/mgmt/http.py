"""A small HTTP/1.1 server on trio streams, enough for a JSON management API and a scraper.

No dependency beyond trio: management traffic is a handful of requests a minute from ``curl``,
``sipserver ctl`` or Prometheus, so one request per connection (``Connection: close``) is plenty.

Invariants:
- Bounded: the request head is at most ``MAX_HEAD`` bytes (else 431), the body at most
  ``MAX_BODY`` (else 413), the whole request must arrive within ``REQUEST_TIMEOUT`` seconds
  (else the connection is dropped), and at most ``MAX_CONNECTIONS`` are served at once (others get
  503). A slow or hostile client cannot hold more than that.
- Bodies need ``Content-Length``; ``Transfer-Encoding`` is refused with 501.
- The handler never brings the server down: an exception becomes a 500 JSON error and a log
  record; a client that goes away mid-answer is ignored.
"""

from __future__ import annotations

import http
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import trio

__all__ = ["HttpRequest", "HttpResponse", "json_error", "json_response", "serve_http"]

log = logging.getLogger("sipserver.mgmt")

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@attrs.frozen
class HttpRequest:
    method: str
    path: str  # percent-decoded, without the query
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case; repeated fields joined with ", "
    body: bytes
    peer: tuple[str, int]

    def arg(self, name: str) -> str | None:
        """The first value of query parameter ``name``."""
        values = self.query.get(name)
        return values[0] if values else None


@attrs.frozen
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def json_response(value: Any, status: int = 200) -> HttpResponse:
    body = json.dumps(value, indent=1, sort_keys=False, default=str).encode() + b"\n"
    return HttpResponse(status, body)


def json_error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    body = json.dumps({"error": message}).encode() + b"\n"
    return HttpResponse(status, body, headers=headers)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_head(head: bytes, peer: tuple[str, int]) -> tuple[HttpRequest, int]:
    """Parse a request head (without the blank line); return it and the body length."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise _BadRequest(400, "undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if not method or not set(method) <= _TOKEN_CHARS:
        raise _BadRequest(400, "malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequest(505, f"unsupported protocol version {version[:20]!r}")
    if not target.startswith("/"):
        raise _BadRequest(400, "request target must be an absolute path")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or not set(name) <= _TOKEN_CHARS:
            raise _BadRequest(400, "malformed header field")
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if "transfer-encoding" in headers:
        raise _BadRequest(501, "Transfer-Encoding is not supported; send Content-Length")
    length = 0
    if "content-length" in headers:
        raw = headers["content-length"]
        if not raw.isdigit() or len(raw) > 12:
            raise _BadRequest(400, "bad Content-Length")
        length = int(raw)
        if length > MAX_BODY:
            raise _BadRequest(413, f"body larger than {MAX_BODY} bytes")
    split = urlsplit(target)
    query = parse_qs(split.query, keep_blank_values=True)
    req = HttpRequest(method, unquote(split.path), query, headers, b"", peer)
    return req, length


async def _read_request(stream: trio.SocketStream, peer: tuple[str, int]) -> HttpRequest:
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(buf) > MAX_HEAD:
            raise _BadRequest(431, f"request head larger than {MAX_HEAD} bytes")
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise EOFError
        buf += chunk
    if end > MAX_HEAD:
        raise _BadRequest(431, f"request head larger than {MAX_HEAD} bytes")
    req, length = parse_head(bytes(buf[:end]), peer)
    body = bytearray(buf[end + 4 :])
    while len(body) < length:
        chunk = await stream.receive_some(min(65536, length - len(body)))
        if not chunk:
            raise EOFError
        body += chunk
    return attrs.evolve(req, body=bytes(body[:length]))


def _encode(resp: HttpResponse) -> bytes:
    try:
        reason = http.HTTPStatus(resp.status).phrase
    except ValueError:
        reason = "Status"
    lines = [
        f"HTTP/1.1 {resp.status} {reason}",
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {len(resp.body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    lines.extend(f"{k}: {v}" for k, v in resp.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + resp.body


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class _Connections:
    def __init__(self) -> None:
        self.open = 0


async def _serve_one(stream: trio.SocketStream, handler: Handler, conns: _Connections) -> None:
    conns.open += 1
    try:
        try:
            sockname = stream.socket.getpeername()
            peer = (str(sockname[0]), int(sockname[1]))
        except OSError:
            return
        if conns.open > MAX_CONNECTIONS:
            resp = json_error(503, "too many management connections")
        else:
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    req = await _read_request(stream, peer)
            except (trio.TooSlowError, EOFError, trio.BrokenResourceError, OSError):
                return
            except _BadRequest as err:
                resp = json_error(err.status, err.message)
            else:
                try:
                    resp = await handler(req)
                except Exception:
                    log.exception("management API handler failed for %s %s", req.method, req.path)
                    resp = json_error(500, "internal error (see the server log)")
        with trio.move_on_after(REQUEST_TIMEOUT):
            await stream.send_all(_encode(resp))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        conns.open -= 1
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await stream.aclose()


async def serve_http(
    handler: Handler,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port (0 picks a free port) and serve until cancelled; ``nursery.start``
    returns the bound (host, port)."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    sockname = listeners[0].socket.getsockname()
    conns = _Connections()

    async def on_connection(stream: trio.SocketStream) -> None:
        await _serve_one(stream, handler, conns)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, on_connection, listeners)
        task_status.started((str(sockname[0]), int(sockname[1])))

