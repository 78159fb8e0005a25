"""Registered bindings and the keys they are stored under (RFC 3261 §10.3, RFC 5626 §6).

Invariants:
- A ``Binding`` is an immutable value: a refresh or replacement is a new ``Binding`` stored under
  the same ``BindingKey``.
- ``Binding.key`` is derived from the binding's own fields when the registrar builds it: an
  outbound binding (``outbound`` True) is keyed by (AoR, instance-id, reg-id) (OB-REG-07); every
  other binding by (AoR, canonical Contact URI) (OB-REG-06, RFC 3261 §10.3 step 7).
- ``expires_at`` and ``registered_at`` are wall-clock seconds, so a binding read back from disk
  after a restart still expires at the right moment.
- A binding never holds flow liveness: ``flow_token`` only *names* the flow (RFC 5626 §5.2);
  whether that flow is alive is the transport's business. That keeps bindings shareable
  between nodes.
- ``to_record``/``from_record`` round-trip every field through JSON-compatible values;
  ``from_record`` and ``BindingKey.from_text`` raise ``ValueError`` and nothing else on bad input.
  ``record_json`` is ``json.dumps(to_record())`` (compact separators), the same text, built
  without the intermediate dict.
- ``Binding`` does no conversion or validation when built (it is made once per REGISTER and
  once per stored row) and takes keyword arguments only: callers pass tuples for the sequence
  fields; ``from_record`` is the one
  place untrusted data comes in, and it checks every field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any, NamedTuple
from urllib.parse import unquote

import attrs

from sipserver.sip.uri import SipURI

__all__ = [
    "Binding",
    "BindingKey",
    "Param",
    "canonical_contact",
    "escape_param",
    "escape_user",
    "record_json",
    "render_params",
]

Param = tuple[str, "str | None"]

INSTANCE = "instance"
CONTACT = "contact"


class BindingKey(NamedTuple):
    """Where a binding lives. ``(aor, "instance", instance_id, reg_id)`` for outbound bindings,
    ``(aor, "contact", canonical_contact_uri, None)`` for the rest.

    A tuple so it hashes cheaply and compares equal to the plain tuple a caller writes."""

    aor: str
    kind: str
    ident: str
    reg_id: int | None = None

    @classmethod
    def for_instance(cls, aor: str, instance_id: str, reg_id: int) -> BindingKey:
        """RFC 5626 §6: an outbound binding is identified by AoR, instance-id and reg-id."""
        return cls(aor, INSTANCE, instance_id, reg_id)

    @classmethod
    def for_contact(cls, aor: str, uri: SipURI) -> BindingKey:
        """RFC 3261 §10.3: a classic binding is identified by AoR and Contact URI (compared by
        the §19.1.4 rules, which ``canonical_contact`` folds into one string)."""
        return cls(aor, CONTACT, canonical_contact(uri), None)

    @property
    def text(self) -> str:
        """A reversible one-line form, used as the SQLite primary key and in logs.

        The compact JSON of ``[aor, kind, ident, reg_id]``; spelled out here for the field types
        a key really holds (it is computed per stored binding), ``json.dumps`` for anything else."""
        aor, kind, ident, reg_id = self
        if type(aor) is str and type(kind) is str and type(ident) is str:
            if reg_id is None:
                tail = "null]"
            elif type(reg_id) is int:
                tail = f"{int.__repr__(reg_id)}]"
            else:
                tail = ""
            if tail:
                return f"[{_json_str(aor)},{_json_str(kind)},{_json_str(ident)},{tail}"
        return json.dumps([aor, kind, ident, reg_id], separators=(",", ":"))

    @classmethod
    def from_text(cls, text: str) -> BindingKey:
        try:
            value = json.loads(text)
        except (TypeError, ValueError) as err:
            raise ValueError(f"binding key is not JSON: {err}") from None
        if not (isinstance(value, list) and len(value) == 4):
            raise ValueError("binding key must be a list of four items")
        aor, kind, ident, reg_id = value
        if not (isinstance(aor, str) and isinstance(ident, str) and kind in (INSTANCE, CONTACT)):
            raise ValueError("binding key has bad aor, kind or ident")
        if kind == INSTANCE:
            if not (isinstance(reg_id, int) and not isinstance(reg_id, bool)):
                raise ValueError("instance binding key needs an integer reg-id")
        elif reg_id is not None:
            raise ValueError("contact binding key cannot carry a reg-id")
        return cls(aor, kind, ident, reg_id)


# --------------------------------------------------------------------------- URI helpers

_UNRESERVED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()")
_USER_SAFE = _UNRESERVED | frozenset("&=+$,;?/")  # RFC 3261 §25.1 user-unreserved
_PARAM_SAFE = _UNRESERVED | frozenset("[]/:&+$")  # RFC 3261 §25.1 param-unreserved


def _escape(text: str, safe: frozenset[str]) -> str:
    if safe.issuperset(text):  # the usual case: nothing to escape (safe is ASCII only)
        return text
    out: list[str] = []
    for byte in text.encode("utf-8", "surrogateescape"):
        ch = chr(byte)
        out.append(ch if byte < 128 and ch in safe else f"%{byte:02X}")
    return "".join(out)


def escape_user(text: str) -> str:
    """Escape an unescaped user part so it can be written into a SIP URI (RFC 3261 §25.1)."""
    return _escape(text, _USER_SAFE)


def escape_param(text: str) -> str:
    """Escape a URI parameter value (RFC 3261 §25.1 paramchar)."""
    return _escape(text, _PARAM_SAFE)


# RFC 3261 §19.1.4: these parameters must match when either URI has them; any other
# parameter is ignored unless both have it. A key has to be one string, so the others are left
# out altogether (documented: a contact re-registered with a changed unknown parameter is the
# same binding and takes the new URI text).
_SIGNIFICANT_PARAMS = ("transport", "user", "method", "maddr", "ttl")


def canonical_contact(uri: SipURI) -> str:
    """One string per equivalence class of Contact URIs (RFC 3261 §19.1.4, simplified).

    Scheme, user (unescaped, case-sensitive), password, host (case-insensitive), port, the
    significant parameters and the headers (never ignored; that keeps RFC 4475 regescrt's
    ``?Route=...`` inside the binding's identity)."""
    user = uri.user_unescaped
    parts = [uri.scheme, ":"]
    if user is not None:
        parts.append(escape_user(user))
        if uri.password is not None:
            parts.append(":" + escape_user(unquote(uri.password, errors="surrogateescape")))
        parts.append("@")
    host = uri.host.lower()
    parts.append(f"[{host}]" if ":" in host else host)
    if uri.port is not None:
        parts.append(f":{uri.port}")
    for name in _SIGNIFICANT_PARAMS:
        value = uri.param(name)
        if value is not None:
            parts.append(f";{name}={escape_param(value.lower())}" if value else f";{name}")
    if uri.headers is not None:
        fields = sorted(h for h in uri.headers.split("&") if h)
        parts.append("?" + "&".join(fields))
    return "".join(parts)


def render_params(params: tuple[Param, ...] | list[Param]) -> str:
    return "".join([f";{k}" if v is None else f";{k}={v}" for k, v in params])


# ------------------------------------------------------------------------------ Binding


@attrs.frozen(slots=True, kw_only=True)
class Binding:
    """One registered contact of an AoR, with what is needed to reach it.

    Keyword-only: nineteen fields, several of the same type, are too many to pass by position
    (issue 15; a keyword call costs well under 1 µs more, noise next to a REGISTER).

    ``path`` is the route set towards the UA, top first (RFC 3327 §5.3); when this server was the
    first hop its own Path URI (``sip:TOKEN@...;lr[;ob]``) is the first entry and ``flow_token``
    is that TOKEN, the index used to drop the binding when the flow dies (OB-REG-16)."""

    key: BindingKey
    aor: str
    contact_uri: str
    expires_at: float
    call_id: str
    cseq: int
    contact_params: tuple[Param, ...] = ()
    instance: str | None = None
    instance_id: str | None = None
    reg_id: int | None = None
    q: float = 1.0
    path: tuple[str, ...] = ()
    outbound: bool = False
    flow_token: str | None = None
    transport: str = "udp"
    source: str = ""
    user_agent: str | None = None
    registered_at: float = 0.0
    temp_gruus: tuple[str, ...] = ()

    def remaining(self, now: float) -> int:
        """Seconds left, as the ``expires`` Contact parameter of a 200 OK (RFC 3261 §10.3 step 8).

        Rounded rather than truncated so a binding registered for 3600 s just now shows 3600; a
        live binding never shows 0 (which would read as "removed")."""
        left = self.expires_at - now
        if left <= 0:
            return 0
        return max(1, round(left))

    def contact_value(self, now: float, extra: tuple[Param, ...] = ()) -> str:
        """The Contact header value for this binding: URI in <>, the parameters as registered,
        ``extra`` (GRUUs), then ``expires`` with the time left (OB-REG-15, REG3261-09)."""
        params = render_params(self.contact_params)
        if extra:
            params += render_params(extra)
        return f"<{self.contact_uri}>{params};expires={self.remaining(now)}"

    # ------------------------------------------------------------------ persistence form
    def to_record(self) -> dict[str, Any]:
        """JSON-compatible dict of every field (the key as its text form)."""
        return {
            "key": self.key.text,
            "aor": self.aor,
            "contact_uri": self.contact_uri,
            "expires_at": self.expires_at,
            "call_id": self.call_id,
            "cseq": self.cseq,
            "contact_params": [[k, v] for k, v in self.contact_params],
            "instance": self.instance,
            "instance_id": self.instance_id,
            "reg_id": self.reg_id,
            "q": self.q,
            "path": list(self.path),
            "outbound": self.outbound,
            "flow_token": self.flow_token,
            "transport": self.transport,
            "source": self.source,
            "user_agent": self.user_agent,
            "registered_at": self.registered_at,
            "temp_gruus": list(self.temp_gruus),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Binding:
        """Inverse of ``to_record``; ValueError on any missing or mistyped field."""
        try:
            return _from_record(record)
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"bad binding record: {err!r}") from None


class _Unusual(Exception):
    """Internal: a field holds a type ``record_json`` does not spell out itself."""


_INF = float("inf")


def record_json(b: Binding, key_text: str | None = None) -> str:
    """``json.dumps(b.to_record(), separators=(",", ":"))``, the same text, without building the
    dict (this runs for every binding written to disk). ``key_text``: ``b.key.text`` when the
    caller already has it. Fields of a type the fast path does not spell out (an int where a
    float belongs, a non-finite number...) take ``json.dumps``."""
    try:
        expires_at = b.expires_at
        q = b.q
        registered_at = b.registered_at
        cseq = b.cseq
        reg_id = b.reg_id
        outbound = b.outbound
        if not (
            type(expires_at) is float
            and -_INF < expires_at < _INF
            and type(q) is float
            and -_INF < q < _INF
            and type(registered_at) is float
            and -_INF < registered_at < _INF
            and type(cseq) is int
            and (reg_id is None or type(reg_id) is int)
            and (outbound is True or outbound is False)
        ):
            raise _Unusual
        instance = b.instance
        instance_id = b.instance_id
        flow_token = b.flow_token
        user_agent = b.user_agent
        params = ",".join(
            [
                f"[{_json_str(k)},{'null' if v is None else _json_str(v)}]"
                for k, v in b.contact_params
            ]
        )
        # json.dumps writes str with encode_basestring_ascii, float with float.__repr__ and int
        # with int.__repr__: the same functions are used here.
        return (
            f'{{"key":{_json_str(b.key.text if key_text is None else key_text)},'
            f'"aor":{_json_str(b.aor)},"contact_uri":{_json_str(b.contact_uri)},'
            f'"expires_at":{float.__repr__(expires_at)},"call_id":{_json_str(b.call_id)},'
            f'"cseq":{int.__repr__(cseq)},"contact_params":[{params}],'
            f'"instance":{"null" if instance is None else _json_str(instance)},'
            f'"instance_id":{"null" if instance_id is None else _json_str(instance_id)},'
            f'"reg_id":{"null" if reg_id is None else int.__repr__(reg_id)},'
            f'"q":{float.__repr__(q)},"path":[{",".join(map(_json_str, b.path))}],'
            f'"outbound":{"true" if outbound else "false"},'
            f'"flow_token":{"null" if flow_token is None else _json_str(flow_token)},'
            f'"transport":{_json_str(b.transport)},"source":{_json_str(b.source)},'
            f'"user_agent":{"null" if user_agent is None else _json_str(user_agent)},'
            f'"registered_at":{float.__repr__(registered_at)},'
            f'"temp_gruus":[{",".join(map(_json_str, b.temp_gruus))}]}}'
        )
    except (_Unusual, TypeError, ValueError):
        return json.dumps(b.to_record(), separators=(",", ":"))


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("expected a finite number")
    return float(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected an integer")
    return value


def _from_record(r: Mapping[str, Any]) -> Binding:
    params: list[Param] = []
    for item in r["contact_params"]:
        if not (isinstance(item, list | tuple) and len(item) == 2):
            raise ValueError("contact_params items must be pairs")
        params.append((_str(item[0]), _opt_str(item[1])))
    reg_id = r["reg_id"]
    return Binding(
        key=BindingKey.from_text(_str(r["key"])),
        aor=_str(r["aor"]),
        contact_uri=_str(r["contact_uri"]),
        expires_at=_num(r["expires_at"]),
        call_id=_str(r["call_id"]),
        cseq=_int(r["cseq"]),
        contact_params=tuple(params),
        instance=_opt_str(r["instance"]),
        instance_id=_opt_str(r["instance_id"]),
        reg_id=None if reg_id is None else _int(reg_id),
        q=_num(r["q"]),
        path=tuple(_str(p) for p in r["path"]),
        outbound=bool(r["outbound"]),
        flow_token=_opt_str(r["flow_token"]),
        transport=_str(r["transport"]),
        source=_str(r["source"]),
        user_agent=_opt_str(r["user_agent"]),
        registered_at=_num(r["registered_at"]),
        temp_gruus=tuple(_str(t) for t in r["temp_gruus"]),
    )
