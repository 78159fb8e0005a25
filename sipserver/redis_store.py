"""Bindings in Redis (``store.backend = "redis"``): the storage slice of issue 20.

The in-memory ``LocationStore`` still answers every lookup; Redis mirrors it as SQLite does
(``registrar.sqlite_store``), so a restart, or later another node, finds the bindings there.
Cluster routing between nodes, node heartbeats and ``--workers`` are not part of this slice.

Layout: one Redis string per binding, ``<store.redis_key_prefix>binding:<BindingKey.text>``,
holding the binding's JSON record (``Binding.to_record``, the same text as SQLite's ``record``
column), with a Redis TTL of the binding's remaining lifetime, so Redis drops an expired binding
by itself as the server does locally. One key per binding rather than a hash per AoR: per-field
TTLs of a hash need Redis 7.4 (HEXPIRE), and a key per binding keeps a refresh to one SET. The
TTL is relative (``SET ... PX``), computed from ``expires_at`` when the write is sent, so a
clock difference between this host and Redis does not stretch or cut a lifetime, and a write
retried later does not extend it. Removal is ``DEL``.

Where the writes run: in the store-writer child process (``sipserver.store_writer --redis``),
exactly where SQLite's run, not in a ``trio.to_thread`` worker. The redis client is synchronous;
in a thread each batch would take the GIL back from a busy event loop after every socket
send/receive, which is what made SQLite in a thread cost up to the 5 ms switch interval per
step and late 200 OKs under load (store_writer's docstring, docs/performance.md). The child has
a GIL of its own, the event loop only pickles rows onto a pipe, and the parent side (framing,
restart of a dead child) is shared with SQLite. The live bindings are read once at start-up,
before anything is served, by the server process itself (``RedisPersistence.load``).

Invariants:
- A batch is one ``MULTI``/``EXEC``: Redis applies all of it or none of it. A REGISTER's 200 OK
  leaves only after ``EXEC`` was answered (group commit, ``RedisCommit``); how durable that is
  against a Redis crash is Redis's own setting (``appendonly yes``; ``appendfsync always`` for
  the guarantee SQLite's ``synchronous=FULL`` gives, ``everysec`` may lose the last second).
- Redis unreachable (connect or answer not within ``store.redis_timeout``, after one retry on a
  fresh connection): the REGISTERs of the batch are answered 503 with Retry-After and a reason
  naming ``store.redis_url``; their changes stay in the local view (calls still route) and are
  kept, the last change per binding, and written when Redis answers again (retried every
  second and with every new batch). Nothing acknowledged is lost: a 200 was only sent for a
  batch Redis committed, and a batch Redis did not commit is written again, whole.
- Redis must be reachable at start-up: the server does not serve without the bindings it has
  acknowledged before (``PersistenceError`` naming ``store.redis_url``).
- After ``load`` Redis holds exactly what it returned (under this server's prefix): bindings the
  caller chose not to keep (stream connections that died with the old process) and unreadable
  ones are deleted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from .commit import GroupCommit, ReplySender
from .config import StoreConfig
from .registrar import Change, PersistenceError
from .registrar.binding import Binding, BindingKey
from .registrar.sqlite_store import DeleteRow, PutRow, _decode, batch_rows
from .sip import Header, Response
from .sip.build import phrase_with_detail
from .store_writer import StoreWriterProcess

__all__ = ["RedisCommit", "RedisPersistence", "RedisWriterProcess", "child_store", "open_redis", "shown_url"]

log = logging.getLogger("sipserver.store")

#: Seconds between two attempts to write changes Redis has not taken yet.
RETRY_INTERVAL = 1.0
#: The environment variable that hands the child its connection settings (not argv: ``ps``).
ENV = "SIPSERVER_STORE_REDIS"
_CHUNK = 500


def shown_url(url: str) -> str:
    """``store.redis_url`` fit for logs and reason phrases: the password replaced by ``***``."""
    try:
        u = urlsplit(url)
        query = re.sub(r"(^|&)(password=)[^&]*", r"\1\2***", u.query)
        netloc = u.netloc
        if u.password is not None:
            host = u.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            netloc = f"{u.username or ''}:***@{host}" + (f":{u.port}" if u.port else "")
        return f"{u.scheme}://{netloc}{u.path}" + (f"?{query}" if query else "")
    except ValueError:
        return "(unparsable URL)"


class RedisPersistence:
    """Bindings in Redis through the synchronous ``redis`` client. Used by the server process
    for ``load`` and by the store-writer child for ``write_rows``; calls are not concurrent."""

    def __init__(self, url: str, *, timeout: float = 1.0, prefix: str = "sipserver:", node: str = "") -> None:
        self.url = url
        self.where = f"store.redis_url {shown_url(url)}"
        self.prefix = prefix + "binding:"
        #: issue 20: a cluster node publishes every batch it writes on this channel, in the same
        #: MULTI/EXEC, so the other nodes' local views follow (``sipserver.cluster``)
        self.node = node
        self.channel = prefix + "changes"
        #: Bindings dropped by the last ``load`` because they could not be decoded.
        self.unreadable = 0
        try:
            self._redis: redis.Redis | None = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # One retry on a fresh connection (a pooled one may predate a Redis restart),
                # at once: a REGISTER waiting for Redis is better answered 503 than late.
                retry=Retry(NoBackoff(), 1),
                health_check_interval=0,
            )
        except (ValueError, redis.RedisError) as err:
            raise PersistenceError(f"bad {self.where}: {err}") from None

    def _client(self) -> redis.Redis:
        if self._redis is None:
            raise PersistenceError("the Redis location store is closed")
        return self._redis

    def key(self, key_text: str) -> str:
        return self.prefix + key_text

    def write_batch(self, changes: Sequence[Change]) -> None:
        if changes:
            self.write_rows(*batch_rows(changes))

    def write_rows(self, puts: Sequence[PutRow], deletes: Sequence[DeleteRow]) -> None:
        """One ``MULTI``/``EXEC``: every row or none. A binding whose lifetime is already over
        is deleted rather than written."""
        if not puts and not deletes:
            return
        pipe = self._client().pipeline(transaction=True)
        now = time.time()
        gone = [text for (text,) in deletes]
        live: list[tuple[str, str]] = []
        for text in gone:
            pipe.delete(self.prefix + text)
        for text, _aor, expires_at, record in puts:
            ms = int((expires_at - now) * 1000)
            if ms > 0:
                pipe.set(self.prefix + text, record, px=ms)
                live.append((text, record))
            else:
                pipe.delete(self.prefix + text)
                gone.append(text)
        if self.node:
            pipe.publish(self.channel, change_message(self.node, live, gone))
        try:
            pipe.execute()
        except redis.RedisError as err:
            raise PersistenceError(f"cannot write bindings to Redis at {self.where}: {err}") from None

    def load(self, now: float, keep: Callable[[Binding], bool]) -> list[Binding]:
        """The live bindings under this server's prefix for which ``keep`` is true; the others
        (and unreadable ones) are deleted from Redis."""
        client = self._client()
        out: list[Binding] = []
        drop: list[str] = []
        self.unreadable = 0
        try:
            for names in _chunks(client.scan_iter(match=_glob_escape(self.prefix) + "*", count=1000)):
                for name, value in zip(names, client.mget(names), strict=True):
                    if value is None:
                        continue  # expired (or deleted) since the SCAN saw it
                    text = (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name))[len(self.prefix):]
                    record = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                    binding = _decode(text, record)
                    if binding is None:
                        self.unreadable += 1
                        drop.append(name)
                    elif binding.expires_at <= now or not keep(binding):
                        drop.append(name)
                    else:
                        out.append(binding)
            for names in _chunks(drop):
                client.delete(*names)
                if self.node:
                    texts = [(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n))[len(self.prefix):] for n in names]
                    client.publish(self.channel, change_message(self.node, [], texts))
        except redis.RedisError as err:
            raise PersistenceError(f"cannot read bindings from Redis at {self.where}: {err}") from None
        return out

    def close(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            client.close()


def change_message(node: str, puts: Sequence[tuple[str, str]], deletes: Sequence[str]) -> str:
    """The pub/sub message of one written batch (issue 20): who wrote it, the bindings put (key
    text, record) and the keys deleted."""
    return json.dumps({"node": node, "put": [list(p) for p in puts], "del": list(deletes)}, separators=(",", ":"))


def _chunks(items: Iterable[Any]) -> Iterable[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _settings(cfg: StoreConfig, node: str) -> dict[str, Any]:
    return {"url": cfg.redis_url, "timeout": cfg.redis_timeout, "prefix": cfg.redis_key_prefix, "node": node}


def child_store() -> RedisPersistence:
    """The store-writer child's side (``python -m sipserver.store_writer --redis``)."""
    try:
        s = json.loads(os.environ[ENV])
        return RedisPersistence(s["url"], timeout=float(s["timeout"]), prefix=s["prefix"], node=str(s.get("node", "")))
    except (KeyError, ValueError, TypeError) as err:
        raise PersistenceError(f"store writer: no usable {ENV} in the environment ({err})") from None


class RedisWriterProcess(StoreWriterProcess):
    """The store-writer child, writing to Redis instead of the SQLite file."""

    def __init__(self, cfg: StoreConfig, node: str = "") -> None:
        super().__init__(shown_url(cfg.redis_url))
        self._env = json.dumps(_settings(cfg, node))

    def _child_args(self) -> list[str]:
        return ["--redis"]

    def _child_env(self) -> dict[str, str]:
        return {ENV: self._env}


class RedisCommit(GroupCommit):
    """Group commit to Redis. Unlike SQLite's (where a failed write is logged and the 200 sent
    anyway: the local disk failing is not a state to wait out), a batch Redis did not take
    answers its REGISTERs 503 with Retry-After and is written again once Redis is back."""

    def __init__(self, writer: StoreWriterProcess, send_reply: ReplySender, *, where: str, retry_after: int) -> None:
        super().__init__(writer, send_reply)
        self.where = where
        self.retry_after = str(retry_after)
        self.reason = phrase_with_detail(503, f"location store unreachable: {where}")
        #: Changes Redis has not taken yet, the last one per binding.
        self.unwritten: dict[BindingKey, Change] = {}
        self.reachable = True

    def _batch(self) -> list[Change]:
        merged, self.unwritten = self.unwritten, {}
        pending, self._pending = self._pending, []
        for change in pending:
            merged.pop(change.key, None)  # batch order for the surviving change
            merged[change.key] = change
        return list(merged.values())

    async def run(self) -> None:
        while True:
            if self.unwritten:
                with trio.move_on_after(RETRY_INTERVAL):
                    await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake = trio.Event()
            batch = self._batch()
            replies = self._take_replies()
            ok = await self._write_batch(batch)
            await self.send_replies(replies if ok else [(txn, self.unavailable(resp)) for txn, resp in replies])
            self._writing_since = None

    async def _write_batch(self, batch: list[Change]) -> bool:
        if not batch or self.writer is None:
            return True
        try:
            await self._write(*batch_rows(batch))
        except Exception as err:
            for change in batch:
                self.unwritten.setdefault(change.key, change)  # newer ones queued meanwhile win
            if self.reachable:
                log.error("%s; REGISTERs are answered 503 until Redis answers again", err)
            self.reachable = False
            return False
        if not self.reachable:
            log.warning("Redis answers again (%s): %d binding changes written", self.where, len(batch))
        self.reachable = True
        return True

    def unavailable(self, resp: Response) -> Response:
        """The 503 sent instead of the held 200 OK ``resp`` (same Via, From, To, Call-ID, CSeq)."""
        headers = resp.copy_header_lines(("via", "from", "to", "call-id", "cseq", "server"))
        headers.append(Header("Retry-After", "retry-after", self.retry_after))
        return Response(503, self.reason, headers)

    async def flush(self) -> None:
        """Shutdown: write what Redis has not taken yet, then let the writer process exit."""
        writer = self.writer
        if writer is None:
            return
        batch = self._batch()
        if batch:
            try:
                await writer.write_rows(*batch_rows(batch))
            except PersistenceError as err:
                log.error("%d binding changes not written to Redis at shutdown: %s", len(batch), err)
        await writer.aclose()


def open_redis(cfg: StoreConfig, send_reply: ReplySender, node: str = "") -> tuple[RedisPersistence, RedisCommit]:
    """``store.backend = "redis"``: the persistence ``run`` loads from, and the group commit.
    ``node`` is the cluster node's name (issue 20): its writes are published to the others."""
    persistence = RedisPersistence(cfg.redis_url, timeout=cfg.redis_timeout, prefix=cfg.redis_key_prefix, node=node)
    commit = RedisCommit(
        RedisWriterProcess(cfg, node), send_reply, where=persistence.where, retry_after=cfg.redis_retry_after
    )
    return persistence, commit
