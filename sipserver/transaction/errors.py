"""The one exception type of the transaction layer.

Raised only when a transaction or a ``TimerConfig`` is *built* from something unusable (a request
of the wrong method, a request without a usable top Via or CSeq, a timer value out of range) or a
transaction is added to a table twice. Feeding messages, responses, timers and transport errors to
an existing transaction never raises: inputs that do not fit the current state are ignored.
"""

from __future__ import annotations


class TransactionError(Exception):
    """A transaction (or its timer settings) cannot be built from what was given."""
