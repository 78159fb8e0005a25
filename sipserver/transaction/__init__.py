"""Sans-IO RFC 3261 §17 transactions (with RFC 6026 ACCEPTED states) and their matching table.

Nothing here imports trio or reads a clock: every input carries ``now`` and every method returns
a list of actions (``Send``, ``DeliverResponse``, ``DeliverRequest``, ``Timeout``,
``TransportError``, ``Terminated``) for the runtime and the core to carry out in order.
"""

from .client import (
    ClientKey,
    ClientTransaction,
    InviteClientTransaction,
    NonInviteClientTransaction,
)
from .errors import TransactionError
from .events import (
    Action,
    DeliverRequest,
    DeliverResponse,
    Send,
    Terminated,
    Timeout,
    TransportError,
)
from .machine import Input, TransactionMachine, TransactionState
from .server import (
    InviteServerTransaction,
    LegacyKey,
    NonInviteServerTransaction,
    ServerKey,
    ServerTransaction,
    has_rfc3261_branch,
)
from .table import Transaction, TransactionTable
from .timers import TimerConfig

__all__ = [
    "Action",
    "ClientKey",
    "ClientTransaction",
    "DeliverRequest",
    "DeliverResponse",
    "Input",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "LegacyKey",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "Send",
    "ServerKey",
    "ServerTransaction",
    "Terminated",
    "Timeout",
    "TimerConfig",
    "Transaction",
    "TransactionError",
    "TransactionMachine",
    "TransactionState",
    "TransactionTable",
    "TransportError",
    "has_rfc3261_branch",
]
