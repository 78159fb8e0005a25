"""The server's parts, each built from its config section (the runtime wires them together).
Raises what the part raises on a bad file or value, so start-up fails with the reason."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import attrs

from .auth.credentials import CredentialStore
from .auth.digest import DigestAuthenticator
from .auth.gate import AuthGate
from .auth.limits import FailureBan, TokenBucketLimiter
from .commit import GroupCommit, ReplySender
from .config import Config
from .outbound.flowtoken import FlowTokenCodec
from .outbound.keyfile import load_or_create_key, parse_secret
from .registrar import MemoryPersistence, RegistrarSettings, SqlitePersistence
from .store_writer import StoreWriterProcess
from .transport.flows import FlowLimits, FlowTable

if TYPE_CHECKING:
    from .cluster import Cluster
    from .runtime import Server


def flow_token_codec(cfg: Config) -> tuple[FlowTokenCodec, bytes]:
    """Flow tokens: key from config or generated file (0600); previous keys still verify."""
    if cfg.outbound.secret:
        key = parse_secret(cfg.outbound.secret)
    else:
        key = load_or_create_key(cfg.flow_token_key_path)
    previous = [parse_secret(s) for s in cfg.outbound.previous_secrets]
    return FlowTokenCodec(key, previous, node=cfg.cluster.node_id), key


def auth_gate(cfg: Config, key: bytes, stats: dict[str, int]) -> AuthGate | None:
    if not cfg.auth_enabled:
        return None
    realm = cfg.auth.realm or (cfg.server.domains[0] if cfg.server.domains else "sipserver")
    if cfg.auth.credentials_file:
        credentials = CredentialStore.load_file(cfg.auth.credentials_file, realm)
    else:
        users = {name: {k: v for k, v in attrs.asdict(u).items() if v} for name, u in cfg.users.items()}
        credentials = CredentialStore.from_users(realm, users)
    secret = parse_secret(cfg.auth.secret) if cfg.auth.secret else hashlib.sha256(b"digest-nonce:" + key).digest()
    a = cfg.auth
    digest = DigestAuthenticator(realm, secret, nonce_lifetime=a.nonce_lifetime, algorithms=tuple(a.algorithms))
    return AuthGate(credentials, digest, FailureBan(a.max_failures, a.failure_window, a.ban_time), stats)


def flow_table(cfg: Config) -> FlowTable:
    lim = cfg.limits
    return FlowTable(
        serial_base=(int(time.time()) & 0xFFFFFFFF) << 24,  # distinct across restarts
        limits=FlowLimits(
            max_connections=lim.max_connections,
            max_connections_per_ip=lim.max_connections_per_ip,
            max_udp_flows=lim.max_udp_flows,
            partial_message_timeout=lim.partial_message_timeout,
            idle_flow_timeout=lim.idle_flow_timeout,
            max_message_size=lim.max_message_size,
            udp_warn_size=lim.udp_warn_size,
        ),
    )


def location_store(cfg: Config, send_reply: ReplySender) -> tuple[Any, GroupCommit]:
    """store.backend: what ``Server.run`` loads the bindings from at start-up (SQLite is opened
    here, so a bad path fails at once), and the group commit whose store-writer child process
    writes every change from then on (off the event loop's GIL)."""
    if cfg.store.backend == "redis":
        from .redis_store import open_redis  # the redis client is imported only when used

        return open_redis(cfg.store, send_reply, cfg.cluster.node_id)
    if cfg.store.backend == "sqlite":
        return SqlitePersistence(cfg.store_path), GroupCommit(StoreWriterProcess(str(cfg.store_path)), send_reply)
    return MemoryPersistence(), GroupCommit(None, send_reply)


def registrar_settings(cfg: Config) -> RegistrarSettings:
    r = cfg.registrar
    return RegistrarSettings(
        min_expires=r.min_expires, max_expires=r.max_expires, default_expires=r.default_expires,
        flow_timer=r.flow_timer, flow_timer_udp=r.flow_timer_udp, outbound_without_first_hop=r.outbound_without_first_hop,
        gruu=r.gruu, require_instance=r.require_instance,
    )



def rate_limiter(cfg: Config) -> TokenBucketLimiter | None:
    rl = cfg.rate_limit
    return TokenBucketLimiter(rl.requests_per_second, rl.burst) if rl.enabled else None


def join_cluster(server: Server) -> Cluster | None:
    """[cluster] node_id (issue 20): this server is one node; its routing learns the others."""
    if not server.cfg.cluster.enabled:
        return None
    from .cluster import Cluster  # the redis client is imported only when used

    cluster = Cluster(server)
    server.identity.node = server.cfg.cluster.node_id
    server.core.node_address = cluster.peer_address
    return cluster
