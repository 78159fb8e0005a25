"""The location store: registered bindings in memory, indexed for the questions the server asks.

Every write is a batch of ``Change`` values (``Put`` / ``Delete``) handed to ``apply``; the same
batch is what the persistence layer writes in one transaction, and what a networked store
(DESIGN.md: Redis or PostgreSQL shared by several nodes) would ship in one round trip. Reads are
plain method calls with ``now`` passed in.

Invariants:
- ``_bindings`` is the truth; the per-AoR, per-flow-token, per-instance and temp-GRUU indexes are
  updated in the same call that changes it, so they never disagree with it.
- ``lookup`` never returns a binding whose ``expires_at`` is not after ``now``, even before
  ``expire(now)`` has removed it (expiry is exact, removal is on the runtime's timer).
- The expiry heap holds ``(expires_at, key)`` for every stored binding, plus stale entries (a
  refreshed or deleted binding leaves its old deadline behind: lazy deletion keeps a write O(log
  n)). An entry counts only while its time equals the stored binding's ``expires_at``; the heap
  is rebuilt when stale entries outnumber live ones, so memory stays O(bindings). Two entries with
  the same time compare their keys, which is safe: keys that agree on AoR, kind and ident also
  agree on the type of ``reg_id`` (an int for ``instance`` keys, None for ``contact`` keys).
- Temporary GRUUs stay valid while any binding of their (AoR, instance) exists and the binding that
  minted them keeps its Call-ID (RFC 5627 §3.2, GRUU-03); a public GRUU is known once its instance
  has registered since this store was filled (GRUU-05 tells 404 from 480 by that).
- Nothing here knows whether a flow is alive: ``remove_flow`` is called by whoever learns that it
  died (OB-REG-16, OB-CS-09).
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Collection, Hashable, Iterable
from typing import TypeVar

import attrs

from sipserver.sip.uri import SipURI

from .binding import Binding, BindingKey
from .gruu import parse_gruu

__all__ = ["Change", "Delete", "GruuMatch", "LocationStore", "Put", "RemovalCause"]


class RemovalCause(enum.Enum):
    """Why a binding went away; for logs and metrics (persistence treats them alike)."""

    UNREGISTERED = "unregistered"  # expires=0 or Contact: * (RFC 3261 §10.3 step 7)
    EXPIRED = "expired"
    FLOW_FAILED = "flow-failed"  # RFC 5626 §4.4 / §5.3.1: connection closed, keep-alive lost, 430
    ADMIN = "admin"


@attrs.frozen(slots=True)
class Put:
    """Store ``binding`` under its key, replacing what was there."""

    binding: Binding

    @property
    def key(self) -> BindingKey:
        return self.binding.key


@attrs.frozen(slots=True)
class Delete:
    """Remove the binding stored under ``key`` (no-op when there is none)."""

    key: BindingKey
    cause: RemovalCause = RemovalCause.UNREGISTERED


Change = Put | Delete

_Instance = tuple[str, str]  # (aor, instance_id)
_K = TypeVar("_K", bound=Hashable)


@attrs.frozen(slots=True)
class GruuMatch:
    """A Request-URI recognised as one of our GRUUs (RFC 5627 §7): route only to bindings of
    ``aor`` with ``instance_id``; ``registered`` False means 480, no match at all means 404."""

    aor: str
    instance_id: str
    registered: bool
    temporary: bool


def _host_of(aor: str) -> str:
    return aor.rpartition("@")[2]


class LocationStore:
    """In-memory location service: O(1) per change, O(k) per lookup of an AoR with k bindings.

    A plain slotted class, not attrs with ``attrs.field(factory=...)``: the mypyc build
    (sipserver/native.py) cannot compile a class attribute whose value is a field definition."""

    __slots__ = (
        "_bindings",
        "_by_aor",
        "_by_flow",
        "_by_instance",
        "_temp_users",
        "_instance_temps",
        "_seen_instances",
        "_heap",
    )

    def __init__(self) -> None:
        self._bindings: dict[BindingKey, Binding] = {}
        # Indexes by AoR, flow token and instance; see ``_Keys`` for the form of their values.
        self._by_aor: dict[str, _Keys] = {}
        self._by_flow: dict[str, _Keys] = {}
        self._by_instance: dict[_Instance, _Keys] = {}
        self._temp_users: dict[str, _Instance] = {}
        self._instance_temps: dict[_Instance, set[str]] = {}
        self._seen_instances: set[_Instance] = set()
        # (expires_at, key); no tie-break counter, which would cost an int object per binding.
        self._heap: list[tuple[float, BindingKey]] = []

    def __repr__(self) -> str:
        return f"<LocationStore {len(self._bindings)} bindings>"

    # ------------------------------------------------------------------ reads
    def get(self, key: BindingKey) -> Binding | None:
        """The stored binding, expired or not (the registrar needs its Call-ID and CSeq)."""
        return self._bindings.get(key)

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """Live bindings of ``aor``: highest q first, then oldest registration first."""
        keys = _keys_of(self._by_aor, aor)
        if not keys:
            return []
        live = [b for b in map(self._bindings.__getitem__, keys) if b.expires_at > now]
        if len(live) > 1:
            live.sort(key=_order)
        return live

    def lookup_instance(self, aor: str, instance_id: str, now: float) -> list[Binding]:
        """Live bindings of one UA instance, lowest reg-id first (RFC 5626 §7, GRUU-04)."""
        keys = _keys_of(self._by_instance, (aor, instance_id))
        if not keys:
            return []
        live = [b for b in map(self._bindings.__getitem__, keys) if b.expires_at > now]
        live.sort(key=lambda b: (b.reg_id if b.reg_id is not None else 0, _order(b)))
        return live

    def flow_bindings(self, token: str) -> list[Binding]:
        """Bindings reached through the flow named by ``token`` (expired ones included)."""
        return [self._bindings[k] for k in _keys_of(self._by_flow, token)]

    def find_gruu(self, uri: SipURI, now: float) -> GruuMatch | None:
        """RFC 5627 §7: is ``uri`` a GRUU we handed out, and is its instance registered now?"""
        ref = parse_gruu(uri)
        if ref is None:
            return None
        inst: _Instance | None
        if ref.temp_user is not None:
            inst = self._temp_users.get(ref.temp_user)
            if inst is None or _host_of(inst[0]) != ref.host:
                return None
        else:
            assert ref.aor is not None and ref.instance_id is not None
            inst = (ref.aor, ref.instance_id)
            if inst not in self._seen_instances:
                return None
        registered = any(
            self._bindings[k].expires_at > now for k in _keys_of(self._by_instance, inst)
        )
        return GruuMatch(inst[0], inst[1], registered, ref.temporary)

    def all(self) -> list[Binding]:
        return list(self._bindings.values())

    def count(self) -> int:
        return len(self._bindings)

    def aors(self) -> list[str]:
        return list(self._by_aor)

    def next_deadline(self) -> float | None:
        """Earliest ``expires_at`` of any stored binding (same wall-clock base as ``expire``),
        or None when the store is empty: the runtime sleeps until then and calls ``expire``
        (DESIGN.md: every state machine exposes its next deadline). Stale heap tops are dropped
        here, so a call is O(1) plus O(log n) per stale entry, each dropped once."""
        heap = self._heap
        while heap:
            when, key = heap[0]
            current = self._bindings.get(key)
            if current is not None and current.expires_at == when:
                return when
            heapq.heappop(heap)
        return None

    # ------------------------------------------------------------------ writes
    def apply(self, changes: Iterable[Change]) -> None:
        """Apply a batch in order (a later change to the same key wins)."""
        for change in changes:
            if isinstance(change, Put):
                self._put(change.binding)
            else:
                self._delete(change.key)
        self._maybe_rebuild_heap()

    def expire(self, now: float) -> list[Change]:
        """Remove every binding whose time is up; return the Deletes so they can be persisted."""
        out: list[Change] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            current = self._bindings.get(key)
            if current is not None and current.expires_at <= now:
                self._delete(key)
                out.append(Delete(key, RemovalCause.EXPIRED))
        return out

    def remove_flow(
        self, token: str, cause: RemovalCause = RemovalCause.FLOW_FAILED
    ) -> list[Change]:
        """Drop the bindings tied to a dead flow (OB-REG-16, OB-CS-09); return the Deletes."""
        keys = list(_keys_of(self._by_flow, token))
        out: list[Change] = [Delete(key, cause) for key in keys]
        self.apply(out)
        return out

    def remove_aor(self, aor: str, cause: RemovalCause = RemovalCause.ADMIN) -> list[Change]:
        """Drop every binding of an AoR (management action); return the Deletes."""
        out: list[Change] = [Delete(key, cause) for key in list(_keys_of(self._by_aor, aor))]
        self.apply(out)
        return out

    # ------------------------------------------------------------------ internals
    def _put(self, binding: Binding) -> None:
        key = binding.key
        old = self._bindings.get(key)
        if old is not None:
            # Temp GRUUs the new value no longer carries were invalidated (new Call-ID).
            for user in set(old.temp_gruus).difference(binding.temp_gruus):
                self._forget_temp(user)
            self._unlink(old)
        self._bindings[key] = binding
        self._link(binding)
        if old is not None:
            self._drop_instance_if_gone(old)
        heapq.heappush(self._heap, (binding.expires_at, key))

    def _delete(self, key: BindingKey) -> None:
        old = self._bindings.pop(key, None)
        if old is None:
            return
        self._unlink(old)
        self._drop_instance_if_gone(old)

    def _link(self, b: Binding) -> None:
        _add(self._by_aor, b.aor, b.key)
        if b.flow_token is not None:
            _add(self._by_flow, b.flow_token, b.key)
        if b.instance_id is not None:
            inst = (b.aor, b.instance_id)
            _add(self._by_instance, inst, b.key)
            self._seen_instances.add(inst)
            if b.temp_gruus:
                temps = self._instance_temps.setdefault(inst, set())
                for user in b.temp_gruus:
                    self._temp_users[user] = inst
                    temps.add(user)

    def _unlink(self, b: Binding) -> None:
        _discard(self._by_aor, b.aor, b.key)
        if b.flow_token is not None:
            _discard(self._by_flow, b.flow_token, b.key)
        if b.instance_id is not None:
            _discard(self._by_instance, (b.aor, b.instance_id), b.key)

    def _drop_instance_if_gone(self, b: Binding) -> None:
        """The last binding of an instance is gone: its temporary GRUUs die with it."""
        if b.instance_id is None:
            return
        inst = (b.aor, b.instance_id)
        if inst not in self._by_instance:
            for user in self._instance_temps.pop(inst, ()):
                self._temp_users.pop(user, None)

    def _forget_temp(self, user: str) -> None:
        inst = self._temp_users.pop(user, None)
        if inst is not None:
            temps = self._instance_temps.get(inst)
            if temps is not None:
                temps.discard(user)
                if not temps:
                    del self._instance_temps[inst]

    def _maybe_rebuild_heap(self) -> None:
        """Drop the stale entries once they outnumber the live ones (amortised O(1) per write:
        the next rebuild needs as many new writes as there are bindings)."""
        if len(self._heap) > 2 * len(self._bindings) + 64:
            heap = [(b.expires_at, key) for key, b in self._bindings.items()]
            heapq.heapify(heap)
            self._heap = heap


def _order(b: Binding) -> tuple[float, float, str, str, int]:
    key = b.key
    return (-b.q, b.registered_at, key.kind, key.ident, key.reg_id or 0)


# An index entry is the one key of its name (the common case: one binding per AoR, per flow, per
# instance) or, for several, an ordered set (a dict with None values; insertion order keeps
# iteration deterministic). A dict for every entry cost ~220 bytes each, three per binding.
_Keys = BindingKey | dict[BindingKey, None]


def _keys_of(index: dict[_K, _Keys], name: _K) -> Collection[BindingKey]:
    keys = index.get(name)
    if keys is None:
        return ()
    if type(keys) is dict:
        return keys
    return (keys,)  # type: ignore[return-value]


def _add(index: dict[_K, _Keys], name: _K, key: BindingKey) -> None:
    keys = index.get(name)
    if keys is None:
        index[name] = key
    elif type(keys) is dict:
        keys[key] = None
    elif keys != key:
        index[name] = {keys: None, key: None}  # type: ignore[dict-item]


def _discard(index: dict[_K, _Keys], name: _K, key: BindingKey) -> None:
    keys = index.get(name)
    if keys is None:
        return
    if type(keys) is dict:
        keys.pop(key, None)
        if len(keys) == 1:
            index[name] = next(iter(keys))
        elif not keys:
            del index[name]
    elif keys == key:
        del index[name]
