"""This server as one node of a cluster sharing its bindings in Redis (issue 20, ``[cluster]``).

Each node is the edge for the flows it holds; the flow tokens it mints name it
(``outbound.flowtoken``), so a lookup on any node that yields a Path of node A sends the request
to A (``proxy.procedure``, hop kind NODE). This module keeps what the routing needs to know about
the other nodes, and the local view of the bindings in step with Redis:

- Heartbeat: ``<prefix>node:<id>`` holds this node's address (JSON), set every
  ``heartbeat_interval`` with a Redis TTL of ``heartbeat_ttl``. A node whose key is gone is dead.
- Peers: every interval the node keys are read; a node seen before and now gone is dead at once
  for routing (``address`` answers None), and the bindings whose flow it held are removed from
  the local view and from Redis (published like any change), so calls are not black-holed until
  the bindings expire. Phones with a second reg-id flow on another node keep receiving calls
  (RFC 5626 §7). After this node has run for ``heartbeat_ttl``, bindings of nodes that never
  showed a heartbeat are removed the same way.
- Change notifications: each node's store writer publishes every batch it commits on
  ``<prefix>changes`` in the same MULTI/EXEC (``redis_store``); this node applies the batches of
  the others to its local view. A subscriber that lost Redis subscribes again and then reloads
  every binding (what was published meanwhile is lost to it), so the view converges.

Only the node holding a flow pings it (NAT keepalive OPTIONS, Flow-Timer): a binding of another
node has no flow here, and ``natkeeper`` only walks flows of ours.

The redis client is synchronous; its calls run in trio worker threads (a few per second for the
heartbeat and the peers, one blocked reader for the notifications). Binding writes stay in the
store-writer child process, as for a single server.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import redis
import trio

from .outbound.flowtoken import InvalidToken, token_node
from .registrar import Change, Delete, Put
from .registrar import RemovalCause as StoreRemoval
from .registrar.binding import Binding, BindingKey
from .registrar.sqlite_store import _decode
from .sip.uri import SipURI, parse_uri

if TYPE_CHECKING:
    from .runtime import Server
    from .transport.listeners import BoundListener

__all__ = ["Cluster", "NodeInfo", "node_address", "own_prefix"]

log = logging.getLogger("sipserver.cluster")

#: Seconds between two attempts to subscribe again after Redis went away.
RESUBSCRIBE = 1.0
#: Seconds between two walks of the bindings for nodes without a heartbeat (at least the TTL).
SWEEP_INTERVAL = 10.0


@attrs.frozen
class NodeInfo:
    """A node as its heartbeat key describes it."""

    node_id: str
    address: str  # a SIP URI: sip:HOST:PORT;transport=tcp
    pid: int = 0
    started: float = 0.0


def node_address(listeners: list[BoundListener], configured: str) -> str:
    """This node's address for the others (``cluster.address``, else the first TCP listener,
    else the first UDP one, ``;advertise`` applied), as a SIP URI. ValueError when there is none
    usable (a wildcard listener and no ``cluster.address``)."""
    if configured:
        host, _, port = configured.rpartition(":")
        transport = "tcp" if any(bl.transport == "tcp" for bl in listeners) else "udp"
        return f"sip:{host}:{port};transport={transport}"
    for wanted in ("tcp", "udp"):
        for bl in listeners:
            if bl.transport != wanted:
                continue
            lhost = bl.advertise_host or bl.host
            lport = bl.advertise_port or bl.port
            if lhost in ("0.0.0.0", "::"):
                raise ValueError(
                    f"cluster.address: the {wanted} listener {bl} is a wildcard; set cluster.address "
                    "to HOST:PORT where the other nodes reach this one"
                )
            shown = f"[{lhost}]" if ":" in lhost else lhost
            return f"sip:{shown}:{lport};transport={wanted}"
    raise ValueError("cluster.address: no TCP or UDP listener to reach this node at; set cluster.address")


class Cluster:
    """The other nodes, this node's heartbeat, and the local view kept in step (see module doc)."""

    def __init__(self, server: Server) -> None:
        cfg = server.cfg
        self.server = server
        self.node_id = cfg.cluster.node_id
        self.interval = cfg.cluster.heartbeat_interval
        self.ttl = cfg.cluster.heartbeat_ttl
        self.prefix = cfg.store.redis_key_prefix
        self.channel = self.prefix + "changes"
        self.url = cfg.store.redis_url
        self.timeout = cfg.store.redis_timeout
        self.address = ""
        self.started = time.time()
        self.peers: dict[str, NodeInfo] = {}
        self._uris: dict[str, SipURI] = {}
        self.dead: dict[str, float] = {}  # node -> when it was found dead (wall clock)
        self.missing: dict[str, float] = {}  # node named by bindings, no heartbeat seen, since
        self._next_sweep = 0.0
        self.redis_ok = True
        self._redis_lost = False  # a heartbeat or a poll failed since the last good poll
        self._deaths_after = 0.0  # no death is declared before this (wall clock): see _poll
        self.changes_applied = 0
        self.nodes_removed = 0
        self.bindings_removed = 0
        self._redis: redis.Redis | None = None
        self._wake = trio.Event()  # set when a batch names a node not yet known: poll the peers now

    def _client(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout, health_check_interval=0
            )
        return self._redis

    # ------------------------------------------------------------------ routing
    def peer_address(self, node: str) -> SipURI | None:
        """Where to send a request for a flow ``node`` holds; None when it is not alive."""
        if node == self.node_id:
            return None
        info = self.peers.get(node)
        if info is None:
            return None
        uri = self._uris.get(info.address)
        if uri is None:
            try:
                parsed = parse_uri(info.address)
            except Exception:
                return None
            if not isinstance(parsed, SipURI):
                return None
            uri = self._uris[info.address] = parsed
        return uri

    def node_of(self, binding: Binding) -> str:
        """The node holding the flow of ``binding`` ("" when none of the cluster's does)."""
        if binding.flow_token is None:
            return ""
        try:
            _, node = self.server.codec.decode_node(binding.flow_token)
        except InvalidToken:
            return ""
        return node

    def keep_at_start(self, keep: Callable[[Binding], bool]) -> Callable[[Binding], bool]:
        """Start-up load: another node's bindings are that node's business; ours as alone."""

        def decide(b: Binding) -> bool:
            node = self.node_of(b)
            return (bool(node) and node != self.node_id) or keep(b)

        return decide

    # ------------------------------------------------------------------ tasks
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat, peers and notifications; started once the listeners are bound."""
        self.address = node_address(self.server.listeners, self.server.cfg.cluster.address)
        self.started = time.time()
        await self._beat()
        await self._poll()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._subscriber)
            nursery.start_soon(self._heartbeat_loop)
            log.info("cluster node %s at %s (heartbeat every %gs, dead after %gs)", self.node_id, self.address,
                     self.interval, self.ttl)
            task_status.started()

    async def _heartbeat_loop(self) -> None:
        next_beat = trio.current_time() + self.interval
        while True:
            with trio.move_on_at(next_beat):
                await self._wake.wait()
            self._wake = trio.Event()
            if trio.current_time() >= next_beat:
                next_beat = trio.current_time() + self.interval
                await self._beat()
            # A node that started after this one is learnt here; a batch from it wakes the loop
            # at once so that its phones are not answered 480 until the next heartbeat.
            await self._poll()

    async def _beat(self) -> None:
        value = json.dumps({"address": self.address, "pid": os.getpid(), "started": self.started})
        key = self.prefix + "node:" + self.node_id
        ms = int(self.ttl * 1000)
        try:
            await trio.to_thread.run_sync(lambda: self._client().set(key, value, px=ms), abandon_on_cancel=True)
        except redis.RedisError as err:
            if self.redis_ok:
                log.error("cluster: cannot refresh this node's heartbeat in Redis (%s); the other nodes "
                          "will hold it dead after %gs", err, self.ttl)
            self.redis_ok = False
            self._redis_lost = True
            return
        if not self.redis_ok:
            log.warning("cluster: Redis answers again; heartbeat refreshed")
        self.redis_ok = True

    def _read_nodes(self) -> dict[str, NodeInfo]:
        client = self._client()
        names = list(client.scan_iter(match=_glob_escape(self.prefix + "node:") + "*", count=1000))
        out: dict[str, NodeInfo] = {}
        if not names:
            return out
        for name, value in zip(names, client.mget(names), strict=True):
            if value is None:
                continue
            node = (name.decode() if isinstance(name, bytes) else str(name))[len(self.prefix) + 5:]
            try:
                data = json.loads(value)
                out[node] = NodeInfo(node, str(data["address"]), int(data.get("pid", 0)), float(data.get("started", 0)))
            except (ValueError, KeyError, TypeError):
                continue
        return out

    async def _poll(self) -> None:
        try:
            nodes = await trio.to_thread.run_sync(self._read_nodes, abandon_on_cancel=True)
        except redis.RedisError:
            self._redis_lost = True
            return  # no news is no death: keep routing on what is known (logged by _beat)
        now = time.time()
        if self._redis_lost:
            # Redis was away. Heartbeat keys that expired meanwhile (AOF keeps absolute expiry
            # times) say nothing about the nodes: each gets a whole TTL to write its key again
            # before it is held dead, and meanwhile stays routable.
            self._redis_lost = False
            self._deaths_after = now + self.ttl
            self.missing.clear()
            log.info("cluster: Redis answers again; no node is held dead for the next %gs", self.ttl)
        nodes.pop(self.node_id, None)
        for node, info in nodes.items():
            if node not in self.peers:
                log.info("cluster: node %s is alive at %s", node, info.address)
            self.dead.pop(node, None)
        gone = [n for n in self.peers if n not in nodes]
        if gone and now < self._deaths_after:
            for node in gone:
                nodes[node] = self.peers[node]
            gone = []
        self.peers = nodes
        for node in gone:
            log.warning("cluster: node %s is dead (no heartbeat for %gs): removing the bindings of its flows",
                        node, self.ttl)
            self._bury(node)
        if now < self._deaths_after:
            self._next_sweep = max(self._next_sweep, self._deaths_after)
        elif gone or now >= self._next_sweep:
            # A walk of every binding: at a death, and now and then for bindings naming a node
            # that has shown no heartbeat for a whole TTL (dead before this node started, or a
            # death missed while Redis was away).
            self._next_sweep = now + max(self.ttl, SWEEP_INTERVAL)
            self._remove_orphans(now)

    def _bury(self, node: str) -> None:
        self.dead[node] = time.time()
        self.missing.pop(node, None)
        self.nodes_removed += 1

    def _remove_orphans(self, now: float) -> None:
        """Bindings whose flow a dead node held: out of the local view and out of Redis."""
        s = self.server
        changes: list[Change] = []
        unknown: set[str] = set()
        for b in s.store.all():
            node = self.node_of(b)
            if not node or node == self.node_id or node in self.peers:
                continue
            if node not in self.dead:
                since = self.missing.setdefault(node, now)
                if now - since < self.ttl:
                    unknown.add(node)
                    continue
                log.warning("cluster: node %s has shown no heartbeat for %gs: removing the bindings of its flows",
                            node, now - since)
                self._bury(node)
            changes.append(Delete(b.key, StoreRemoval.FLOW_FAILED))
        for node in [n for n in self.missing if n not in unknown]:
            del self.missing[node]
        if unknown:
            self._next_sweep = min(self._next_sweep, now + self.ttl)
        if changes:
            s.store.apply(changes)
            s.commit.queue(changes)
            self.bindings_removed += len(changes)
            log.info("cluster: %d bindings of dead nodes removed", len(changes))

    # ------------------------------------------------------------------ notifications
    async def _subscriber(self) -> None:
        first = True
        while True:
            try:
                await trio.to_thread.run_sync(self._listen, trio.lowlevel.current_trio_token(), first,
                                              abandon_on_cancel=True)
            except redis.RedisError as err:
                log.warning("cluster: change notifications from Redis lost (%s); subscribing again", err)
            first = False
            await trio.sleep(RESUBSCRIBE)

    def _listen(self, token: trio.lowlevel.TrioToken, first: bool) -> None:
        """Worker thread: subscribe, reload everything (after the subscription, so nothing falls
        in between), then hand each message to the event loop."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=self.timeout, health_check_interval=0)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel)
            if not first:
                snapshot = self._snapshot(client)
                trio.from_thread.run_sync(self._resync, snapshot, trio_token=token)
            own = own_prefix(self.node_id)
            while True:
                msg = pubsub.get_message(timeout=1.0)
                if msg is not None and msg.get("type") == "message":
                    data = msg["data"]
                    if (data if isinstance(data, bytes) else str(data).encode()).startswith(own):
                        continue  # this node's own batch: already in its view; no loop time
                    trio.from_thread.run_sync(self.apply_message, data, trio_token=token)
        finally:
            pubsub.close()
            client.close()

    def _snapshot(self, client: redis.Redis) -> dict[str, str]:
        base = self.prefix + "binding:"
        out: dict[str, str] = {}
        names = list(client.scan_iter(match=_glob_escape(base) + "*", count=1000))
        for i in range(0, len(names), 500):
            chunk = names[i:i + 500]
            for name, value in zip(chunk, client.mget(chunk), strict=True):
                if value is not None:
                    text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
                    out[text[len(base):]] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return out

    def _resync(self, snapshot: dict[str, str]) -> None:
        """After notifications were lost: the other nodes' bindings are what Redis holds."""
        s = self.server
        now = s.clock.wall()
        changes: list[Change] = []
        for b in s.store.all():
            node = self.node_of(b)
            if node and node != self.node_id and b.key.text not in snapshot:
                changes.append(Delete(b.key, StoreRemoval.ADMIN))
        for text, record in snapshot.items():
            got = _decode(text, record)
            if got is not None and got.expires_at > now and self.node_of(got) != self.node_id:
                changes.append(Put(got))
        s.store.apply(changes)
        log.info("cluster: local view reloaded from Redis (%d bindings)", s.store.count())

    def apply_message(self, data: bytes | str) -> None:
        """One batch another node wrote: into the local view (not written back)."""
        try:
            msg = json.loads(data)
            sender = msg.get("node")
            if sender == self.node_id:
                return
            if sender and sender not in self.peers:
                self._wake.set()
            now = self.server.clock.wall()
            changes: list[Change] = []
            for text, record in msg.get("put", ()):
                b = _decode(text, record)
                if b is not None and b.expires_at > now:
                    changes.append(Put(b))
            for text in msg.get("del", ()):
                changes.append(Delete(BindingKey.from_text(str(text)), StoreRemoval.ADMIN))
        except (ValueError, TypeError, AttributeError) as err:
            log.warning("cluster: unreadable change notification ignored (%s)", err)
            return
        self.server.store.apply(changes)
        self.changes_applied += len(changes)

    # ------------------------------------------------------------------ status
    def binding_counts(self) -> dict[str, int]:
        """Bindings of the local view per node holding their flow ("-": none of the cluster's)."""
        counts: dict[str, int] = {}
        for b in self.server.store.all():
            node = (token_node(b.flow_token) if b.flow_token else "") or "-"
            counts[node] = counts.get(node, 0) + 1
        return counts

    def status(self) -> dict[str, Any]:
        """``GET /cluster`` and ``sipserver ctl cluster``."""
        counts = self.binding_counts()
        nodes = [{"node": self.node_id, "address": self.address, "alive": True, "self": True, "pid": os.getpid(),
                  "bindings": counts.get(self.node_id, 0)}]
        for node, info in sorted(self.peers.items()):
            nodes.append({"node": node, "address": info.address, "alive": True, "self": False, "pid": info.pid,
                          "bindings": counts.get(node, 0)})
        for node, since in sorted(self.dead.items()):
            nodes.append({"node": node, "address": "", "alive": False, "self": False, "dead_since": since,
                          "bindings": counts.get(node, 0)})
        return {"node": self.node_id, "redis": "ok" if self.redis_ok else "unreachable", "nodes": nodes,
                "unowned_bindings": counts.get("-", 0), "changes_applied": self.changes_applied,
                "bindings_removed": self.bindings_removed}


def own_prefix(node_id: str) -> bytes:
    """How a change notification of ``node_id`` begins (``redis_store.change_message`` writes the
    node first): a node skips its own batches in the listener thread, before the JSON decoding
    and the hop to the event loop (each batch reaches every subscriber, its writer included)."""
    return ('{"node":' + json.dumps(node_id) + ",").encode()


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
