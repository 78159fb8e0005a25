"""Transaction timer settings (RFC 3261 §17 and Table 4 of Appendix A; RFC 6026 timers L and M).

Invariants: a ``TimerConfig`` is an immutable value checked when built (T1 > 0, T2 >= T1, T4 >= 0,
D >= 0, the 100-Trying delay > 0 or None), so every retransmission interval derived from it is
positive and a timer loop always advances. Durations are seconds; nothing here reads a clock.
"""

from __future__ import annotations

import math

import attrs

from .errors import TransactionError


def _check(config: TimerConfig) -> None:
    values = [config.t1, config.t2, config.t4, config.d]
    if config.trying is not None:
        values.append(config.trying)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise TransactionError("timer values must be finite numbers")
    if config.t1 <= 0:
        raise TransactionError("T1 must be positive")
    if config.t2 < config.t1:
        raise TransactionError("T2 must not be below T1")
    if config.t4 < 0 or config.d < 0:
        raise TransactionError("T4 and Timer D must not be negative")
    if config.trying is not None and config.trying <= 0:
        raise TransactionError("the 100 Trying delay must be positive (or None)")


@attrs.frozen(slots=True)
class TimerConfig:
    """T1 (RTT estimate), T2 (cap for non-INVITE and response retransmits), T4 (max time a
    message stays in the network), all RFC 3261 §17.1.1.1 / Table 4 defaults.

    ``d`` is Timer D on unreliable transports ("at least 32 s", §17.1.1.2); ``trying`` is how
    long an INVITE server transaction waits for the core before it sends 100 Trying itself
    (§17.2.1: "200 ms"), None when the core always answers at once. Bad values raise
    ``TransactionError``.
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    d: float = 32.0
    trying: float | None = 0.2

    def __attrs_post_init__(self) -> None:
        _check(self)

    # Table 4, one per timer; ``reliable`` is True for TCP/TLS/WS/WSS (no retransmissions).
    @property
    def timer_a(self) -> float:
        """INVITE request retransmit, initial interval (doubles on each firing, no cap)."""
        return self.t1

    @property
    def timer_b(self) -> float:
        """INVITE client transaction timeout."""
        return 64 * self.t1

    def timer_d(self, reliable: bool) -> float:
        """Wait in COMPLETED for retransmitted INVITE finals."""
        return 0.0 if reliable else self.d

    @property
    def timer_e(self) -> float:
        """Non-INVITE request retransmit, initial interval (doubles, capped at T2)."""
        return self.t1

    @property
    def timer_f(self) -> float:
        """Non-INVITE client transaction timeout."""
        return 64 * self.t1

    @property
    def timer_g(self) -> float:
        """INVITE final response retransmit, initial interval (doubles, capped at T2)."""
        return self.t1

    @property
    def timer_h(self) -> float:
        """Wait for the ACK of a 3xx-6xx, all transports."""
        return 64 * self.t1

    def timer_i(self, reliable: bool) -> float:
        """Wait in CONFIRMED for ACK retransmissions."""
        return 0.0 if reliable else self.t4

    def timer_j(self, reliable: bool) -> float:
        """Wait in COMPLETED for non-INVITE request retransmissions."""
        return 0.0 if reliable else 64 * self.t1

    def timer_k(self, reliable: bool) -> float:
        """Wait in COMPLETED for non-INVITE response retransmissions."""
        return 0.0 if reliable else self.t4

    @property
    def timer_l(self) -> float:
        """RFC 6026: INVITE server transaction stays ACCEPTED this long, all transports."""
        return 64 * self.t1

    @property
    def timer_m(self) -> float:
        """RFC 6026: INVITE client transaction stays ACCEPTED this long, all transports."""
        return 64 * self.t1
