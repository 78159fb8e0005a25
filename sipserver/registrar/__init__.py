"""Registrar and location store: RFC 3261 §10, RFC 5626 §6, RFC 3327, RFC 5627 (basics)."""

from .binding import Binding, BindingKey, canonical_contact
from .gruu import GruuRef, parse_gruu, pub_gruu, temp_gruu
from .registrar import (
    SUPPORTED_OPTIONS,
    BindingAdded,
    BindingRefreshed,
    BindingRemoved,
    BindingReplaced,
    FlowTokenEncoder,
    RegisterResult,
    Registrar,
    RegistrarEvent,
    RegistrarSettings,
)
from .sqlite_store import (
    MemoryPersistence,
    Persistence,
    PersistenceError,
    SqlitePersistence,
    survives_restart,
)
from .store import Change, Delete, GruuMatch, LocationStore, Put, RemovalCause

__all__ = [
    "SUPPORTED_OPTIONS",
    "Binding",
    "BindingAdded",
    "BindingKey",
    "BindingRefreshed",
    "BindingRemoved",
    "BindingReplaced",
    "Change",
    "Delete",
    "FlowTokenEncoder",
    "GruuMatch",
    "GruuRef",
    "LocationStore",
    "MemoryPersistence",
    "Persistence",
    "PersistenceError",
    "Put",
    "RegisterResult",
    "Registrar",
    "RegistrarEvent",
    "RegistrarSettings",
    "RemovalCause",
    "SqlitePersistence",
    "canonical_contact",
    "parse_gruu",
    "pub_gruu",
    "survives_restart",
    "temp_gruu",
]
