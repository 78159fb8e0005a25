"""The transaction table: matching messages to transactions and running their timers.

Matching follows RFC 3261 §17.1.3 (responses: top Via branch + CSeq method) and §17.2.3 (requests:
branch + sent-by + method, ACK as INVITE). A request whose branch is not an RFC 3261 one (no
``z9hG4bK`` prefix, or the bare prefix as in RFC 4475 badbranch) is matched by the RFC 2543 rules
of §17.2.3: Request-URI, To tag, From tag, Call-ID, CSeq and top Via; an ACK compares the CSeq
number only and its To tag against the tag of the response the transaction sent. CANCEL is matched
to the transaction it cancels as if its method were INVITE (§9.2).

Timers: one heap of (deadline, sequence, transaction) entries with lazy deletion. ``_scheduled``
holds the deadline each live transaction is filed under; a heap entry that disagrees with it is
stale and skipped. Each timer operation is O(log n); the heap is rebuilt when stale entries
outnumber live ones, so its size stays O(n).

Invariants:
- a transaction is in at most one table, at most once; it reports to its table (``scheduler``)
  after every input or timer, so the heap always holds its current deadline and a TERMINATED
  transaction leaves the table in the same call that ended it, however it was driven;
- lookups never raise: a message whose headers cannot be read matches nothing.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from ..sip import ParseError, Request, Response, Via
from .client import (
    ClientKey,
    ClientTransaction,
    InviteClientTransaction,
    NonInviteClientTransaction,
    response_key,
)
from .errors import TransactionError
from .events import Action
from .machine import TransactionMachine
from .server import (
    InviteServerTransaction,
    LegacyKey,
    NonInviteServerTransaction,
    ServerKey,
    ServerTransaction,
    legacy_key,
    server_key,
)

Transaction = ClientTransaction | ServerTransaction
_KINDS = (
    InviteClientTransaction,
    NonInviteClientTransaction,
    InviteServerTransaction,
    NonInviteServerTransaction,
)

# Via parameters a server adds on receipt (RFC 3261 §18.2.1, RFC 3581); they do not make a
# retransmission a different request.
_ADDED_VIA_PARAMS = frozenset({"received", "rport"})


def _via_identity(via: Via) -> tuple[object, ...]:
    params = sorted(
        (name.lower(), value is None, value or "")
        for name, value in via.params
        if name.lower() not in _ADDED_VIA_PARAMS
    )
    return (via.transport, via.host.lower(), via.port, tuple(params))


def _same_uri(a: Request, b: Request) -> bool:
    if a.uri_text == b.uri_text:
        return True
    try:
        return bool(a.uri == b.uri)
    except ParseError:
        return False


def _legacy_match(txn: ServerTransaction, request: Request, as_cancel: bool) -> bool:
    """RFC 3261 §17.2.3, the RFC 2543 rules. Raises ParseError on unreadable headers."""
    orig = txn.request
    if request.call_id != orig.call_id or request.cseq.seq != orig.cseq.seq:
        return False
    if request.from_tag != orig.from_tag or not _same_uri(request, orig):
        return False
    if _via_identity(request.top_via) != _via_identity(orig.top_via):
        return False
    if request.method == "ACK" and not as_cancel:
        # The ACK's To tag is the one of the response the transaction sent (ours or forwarded).
        if not isinstance(txn, InviteServerTransaction) or txn.last_response is None:
            return False
        return request.to_tag == txn.last_response.to_tag
    if request.to_tag != orig.to_tag:
        return False
    if as_cancel:
        return orig.method != "CANCEL" and orig.method != "ACK"
    return request.method == orig.method and request.cseq.method == orig.cseq.method


class TransactionTable:
    """All live transactions of one server, indexed for matching and by next deadline."""

    __slots__ = ("_clients", "_servers", "_legacy", "_heap", "_scheduled", "_sequence")

    def __init__(self) -> None:
        self._clients: dict[ClientKey, ClientTransaction] = {}
        self._servers: dict[ServerKey, ServerTransaction] = {}
        self._legacy: dict[LegacyKey, list[ServerTransaction]] = {}
        self._heap: list[tuple[float, int, Transaction]] = []
        self._scheduled: dict[Transaction, float | None] = {}
        self._sequence = itertools.count()

    # ------------------------------------------------------------------ membership
    def __len__(self) -> int:
        return len(self._scheduled)

    def __contains__(self, txn: object) -> bool:
        return txn in self._scheduled

    def __iter__(self) -> Iterator[Transaction]:
        return iter(list(self._scheduled))

    def add(self, txn: Transaction) -> None:
        """File a new transaction. Raises ``TransactionError`` if it, or another transaction with
        the same key, is already in the table (the runtime should have matched first)."""
        if txn in self._scheduled or txn.scheduler is not None:
            raise TransactionError("transaction already in a table")
        if isinstance(txn, (InviteClientTransaction, NonInviteClientTransaction)):
            if txn.key in self._clients:
                raise TransactionError(f"a client transaction with {txn.key} exists")
            self._clients[txn.key] = txn
        elif txn.key is not None:
            if txn.key in self._servers:
                raise TransactionError(f"a server transaction with {txn.key} exists")
            self._servers[txn.key] = txn
        else:
            self._legacy.setdefault(txn.legacy, []).append(txn)
        self._scheduled[txn] = None
        txn.scheduler = self
        self.update(txn)

    def remove(self, txn: Transaction) -> None:
        """Forget ``txn`` (no-op if absent). Its heap entries go stale and are skipped."""
        if self._scheduled.pop(txn, _MISSING) is _MISSING:
            return
        txn.scheduler = None
        if len(self._heap) > 2 * len(self._scheduled) + 64:
            self._compact()
        if isinstance(txn, (InviteClientTransaction, NonInviteClientTransaction)):
            if self._clients.get(txn.key) is txn:
                del self._clients[txn.key]
        elif txn.key is not None:
            if self._servers.get(txn.key) is txn:
                del self._servers[txn.key]
        else:
            bucket = self._legacy.get(txn.legacy)
            if bucket is not None:
                bucket[:] = [t for t in bucket if t is not txn]
                if not bucket:
                    del self._legacy[txn.legacy]

    def update(self, txn: TransactionMachine) -> None:
        """Re-file ``txn``: drop it if TERMINATED, else index its (possibly new) next deadline.
        O(log n). Transactions call this themselves (``scheduler``) after every input and timer,
        so driving a transaction directly keeps the table right."""
        if not isinstance(txn, _KINDS) or txn not in self._scheduled:
            return
        if txn.terminated:
            self.remove(txn)
            return
        deadline = txn.next_deadline()
        if deadline == self._scheduled[txn]:
            return
        self._scheduled[txn] = deadline
        if deadline is not None:
            heapq.heappush(self._heap, (deadline, next(self._sequence), txn))
            if len(self._heap) > 2 * len(self._scheduled) + 64:
                self._compact()

    # ------------------------------------------------------------------ matching
    def find_client(self, response: Response) -> ClientTransaction | None:
        """§17.1.3: the client transaction a response belongs to, or None (the core then
        decides: drop it, or forward a late 2xx to INVITE, RFC 3261 §16.7)."""
        key = response_key(response)
        return self._clients.get(key) if key is not None else None

    def find_server(self, request: Request) -> ServerTransaction | None:
        """§17.2.3: the server transaction a request belongs to. An ACK finds the INVITE
        transaction it acknowledges; a CANCEL finds only an earlier copy of itself (use
        ``find_invite_for_cancel`` for the INVITE it cancels)."""
        try:
            key = server_key(request)
            if key is not None:
                return self._servers.get(key)
            return self._find_legacy(request, as_cancel=False)
        except ParseError:
            return None

    def find_invite_for_cancel(self, cancel: Request) -> InviteServerTransaction | None:
        """§9.2: the INVITE server transaction a CANCEL refers to (same branch and sent-by, or
        the RFC 2543 rules), None if there is none (PX-14: forward statelessly)."""
        if cancel.method != "CANCEL":
            return None
        try:
            key = server_key(cancel, "INVITE")
            found = (
                self._servers.get(key)
                if key is not None
                else self._find_legacy(cancel, as_cancel=True)
            )
        except ParseError:
            return None
        return found if isinstance(found, InviteServerTransaction) else None

    def _find_legacy(self, request: Request, as_cancel: bool) -> ServerTransaction | None:
        bucket = self._legacy.get(legacy_key(request))
        if not bucket:
            return None
        for txn in bucket:
            if as_cancel and not isinstance(txn, InviteServerTransaction):
                continue
            if request.method == "ACK" and not isinstance(txn, InviteServerTransaction):
                continue
            try:
                if _legacy_match(txn, request, as_cancel):
                    return txn
            except ParseError:
                continue
        return None

    # ------------------------------------------------------------------ timers
    def next_deadline(self) -> float | None:
        """The earliest deadline of any transaction, None when no timer runs anywhere."""
        heap = self._heap
        while heap:
            deadline, _, txn = heap[0]
            if self._scheduled.get(txn, _MISSING) == deadline:
                return deadline
            heapq.heappop(heap)  # stale: the transaction left or moved its deadline
        return None

    def handle_timers(self, now: float) -> list[tuple[Transaction, list[Action]]]:
        """Fire every timer due at ``now``; returns (transaction, actions) for each transaction
        that produced actions, earliest deadline first. TERMINATED ones are dropped."""
        due: list[Transaction] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, txn = heapq.heappop(heap)
            if self._scheduled.get(txn, _MISSING) == deadline:
                due.append(txn)
                # Mark it unscheduled so a second (stale) entry cannot queue it twice.
                self._scheduled[txn] = None
        results: list[tuple[Transaction, list[Action]]] = []
        for txn in due:
            actions = txn.handle_timer(now)  # re-files itself through ``scheduler``
            if actions:
                results.append((txn, actions))
        return results

    def _compact(self) -> None:
        self._heap = [
            (deadline, next(self._sequence), txn)
            for txn, deadline in self._scheduled.items()
            if deadline is not None
        ]
        heapq.heapify(self._heap)

    # ------------------------------------------------------------------ drive and re-file
    def start(self, txn: ClientTransaction) -> list[Action]:
        """Add a new client transaction and return its first actions (send the request)."""
        self.add(txn)
        return txn.start()

    def receive_response(
        self, response: Response, now: float
    ) -> tuple[ClientTransaction, list[Action]] | None:
        """Match a response and feed it to its client transaction; None if none matches."""
        txn = self.find_client(response)
        if txn is None:
            return None
        return txn, txn.on_response(response, now)

    def receive_request(
        self, request: Request, now: float
    ) -> tuple[ServerTransaction, list[Action]] | None:
        """Match a request (retransmission or ACK) and feed it to its server transaction; None
        if it starts a new transaction (or is an ACK for a 2xx / a CANCEL: see the find_*)."""
        txn = self.find_server(request)
        if txn is None:
            return None
        return txn, txn.on_request(request, now)

    def send_response(self, txn: ServerTransaction, response: Response, now: float) -> list[Action]:
        """The core answers through ``txn`` (same as ``txn.send_response``)."""
        return txn.send_response(response, now)

    def transport_error(self, txn: Transaction, now: float) -> list[Action]:
        """Tell ``txn`` its transport failed (same as ``txn.on_transport_error``)."""
        return txn.on_transport_error(now)


class _Missing:
    __slots__ = ()


_MISSING = _Missing()
