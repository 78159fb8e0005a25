"""The machinery the four RFC 3261 §17 transaction state machines share.

Each machine is a table ``(state, input) -> (handler, next_state)`` (h2 style). A handler does the
work of the transition (builds the actions, arms or disarms timers) and returns the actions; the
machine then moves to ``next_state``. A pair missing from the table is an input the RFC gives no
meaning in that state (a 1xx after the final response, anything after TERMINATED...): it is
ignored and yields no actions, never an exception.

Timers follow aioquic: a machine keeps absolute deadlines, ``next_deadline()`` tells the caller
when to come back and ``handle_timer(now)`` fires every timer due at ``now``, earliest first.

Invariants:
- ``state`` only changes through the table; entering TERMINATED clears every timer and appends
  exactly one ``Terminated`` action.
- a timer due at ``now`` fires before any call that is given ``now`` returns; this is how the
  zero-length timers of reliable transports (D, I, J, K = 0) end a transaction in the same call
  that armed them.
- every re-armed interval is positive (``TimerConfig`` checks T1 > 0), so firing loops end.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Protocol

import attrs

from ..sip.message import Response
from .events import Action, Terminated
from .timers import TimerConfig


class TransactionState(enum.Enum):
    """States under the names RFC 3261 §17 and RFC 6026 (ACCEPTED) give them."""

    CALLING = enum.auto()
    TRYING = enum.auto()
    PROCEEDING = enum.auto()
    COMPLETED = enum.auto()
    CONFIRMED = enum.auto()
    ACCEPTED = enum.auto()
    TERMINATED = enum.auto()


class Input(enum.Enum):
    """What can happen to a transaction: a message class, a transport failure, or a timer.

    For client transactions PROVISIONAL/SUCCESS/FAILURE are responses received from the peer;
    for server transactions they are responses the core sends through the transaction."""

    PROVISIONAL = enum.auto()  # 1xx
    SUCCESS = enum.auto()  # 2xx
    FAILURE = enum.auto()  # 3xx-6xx
    REQUEST = enum.auto()  # a retransmission of the request that created a server transaction
    ACK = enum.auto()  # an ACK matched to an INVITE server transaction
    TRANSPORT_ERROR = enum.auto()
    TIMER_A = enum.auto()
    TIMER_B = enum.auto()
    TIMER_D = enum.auto()
    TIMER_E = enum.auto()
    TIMER_F = enum.auto()
    TIMER_G = enum.auto()
    TIMER_H = enum.auto()
    TIMER_I = enum.auto()
    TIMER_J = enum.auto()
    TIMER_K = enum.auto()
    TIMER_L = enum.auto()
    TIMER_M = enum.auto()
    # RFC 3261 §17.2.1: send 100 Trying if the core has not answered an INVITE in 200 ms.
    TIMER_TRYING = enum.auto()


_TIMERS: dict[int, Input] = {i.value: i for i in Input}


def classify_status(status: int) -> Input | None:
    """The input a response status is; None for a status outside 100-699 (ignored)."""
    if 100 <= status <= 199:
        return Input.PROVISIONAL
    if 200 <= status <= 299:
        return Input.SUCCESS
    if 300 <= status <= 699:
        return Input.FAILURE
    return None


# A handler is a method of the machine taking (self, message or None, now) -> actions. The
# message type depends on the input, so the table stores them loosely typed; each handler's own
# signature is checked where it is defined.
Handler = Callable[..., list[Action]]


class Scheduler(Protocol):
    """What a transaction tells when its deadlines may have changed (the table)."""

    def update(self, txn: TransactionMachine) -> None: ...


Transitions = Mapping[tuple[TransactionState, Input], tuple[Handler, TransactionState]]

_NO_TRANSITIONS: Transitions = {}

# What the runtime hangs on a transaction, opaque here. A module-level name: compiled with
# mypyc, an attrs class's field annotations are looked up in the module's globals, where the
# builtin ``object`` is not.
Opaque = object


@attrs.define(eq=False, slots=True)
class TransactionMachine:
    """Base of the four transactions: the table walk and the timer bookkeeping.

    Instances compare by identity (a transaction is a thing, not a value), so they can key
    dicts and sit in the table's heap. The concrete classes have their own constructors."""

    reliable: bool
    timers: TimerConfig
    state: TransactionState
    # Opaque to the transaction layer: the runtime's note of where ``Send`` goes (a Flow).
    context: Opaque
    # Running timers by ``Input.value`` (an int, not the enum member): a dict of ints and floats
    # drops out of the garbage collector's sight, and a completed UDP transaction sits for 32 s
    # with Timer J armed.
    _deadlines: dict[int, float]
    # The table holding this transaction: told after every call that may move a deadline or
    # end the transaction, so the runtime may drive a transaction directly and the table's
    # heap still follows.
    scheduler: Scheduler | None = attrs.field(init=False, default=None, repr=False)
    # Opaque to the transaction layer: what the runtime's core hangs on this transaction (the
    # proxy job a server transaction answers, the branch a client transaction carries).
    owner: Opaque = attrs.field(init=False, default=None, repr=False)

    # ------------------------------------------------------------------ public
    @property
    def terminated(self) -> bool:
        return self.state is TransactionState.TERMINATED

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must be called next; None when no timer is running."""
        if not self._deadlines:
            return None
        return min(self._deadlines.values())

    def handle_timer(self, now: float) -> list[Action]:
        """Fire every timer due at ``now`` (earliest first); calling early does nothing."""
        actions: list[Action] = []
        while self._deadlines:
            value, deadline = min(self._deadlines.items(), key=_deadline_order)
            if deadline > now:
                break
            del self._deadlines[value]
            actions.extend(self._step(_TIMERS[value], None, now))
        if self.scheduler is not None:
            self.scheduler.update(self)
        return actions

    # ------------------------------------------------------------------ for subclasses
    def _response_input(self, response: Response, now: float) -> list[Action]:
        """Feed a response (received by a client, sent by the core through a server) by its
        class; a status outside 100-699 is no input at all."""
        event = classify_status(response.status)
        if event is None:
            return []
        return self._input(event, response, now)

    def _input(self, event: Input, message: object, now: float) -> list[Action]:
        """Feed a non-timer input, then fire whatever became due (zero-length timers)."""
        actions = self._step(event, message, now)
        if self._deadlines:
            actions.extend(self.handle_timer(now))
        elif self.scheduler is not None:
            self.scheduler.update(self)
        return actions

    def _table(self) -> Transitions:
        """This machine's ``(state, input) -> (handler, next state)`` table (each concrete
        class returns its own, a module-level constant: a table in the class body, naming the
        class's methods, is what mypyc cannot compile)."""
        return _NO_TRANSITIONS

    def _step(self, event: Input, message: object, now: float) -> list[Action]:
        entry = self._table().get((self.state, event))
        if entry is None:
            return []
        handler, next_state = entry
        actions = handler(self, message, now)
        if next_state is TransactionState.TERMINATED:
            self._deadlines.clear()
            actions.append(Terminated())
        self.state = next_state
        return actions

    def _arm(self, timer: Input, now: float, duration: float) -> None:
        self._deadlines[timer.value] = now + duration

    def _disarm(self, *timers: Input) -> None:
        for timer in timers:
            self._deadlines.pop(timer.value, None)

    def _nothing(self, message: object, now: float) -> list[Action]:
        """Handler for inputs the RFC says to absorb, or pure state changes."""
        return []


def _deadline_order(item: tuple[int, float]) -> tuple[float, int]:
    # Ties are broken by the timer's declaration order, so results never depend on dict order.
    value, deadline = item
    return deadline, value
