"""REGISTER processing: RFC 3261 §10.3 with RFC 5626 §6 (outbound), RFC 3327 (Path) and the
basics of RFC 5627 (GRUU). Sans-IO: a Request, the Flow it came on and the time go in; a
response, the store changes to persist and log events come out.

Invariants:
- A REGISTER is all or nothing: every check (domain, Require, wildcard, expiry, reg-id, 439,
  CSeq order) runs before anything is changed, so an error response leaves the store untouched.
- ``handle`` applies the changes to the in-memory store itself (later REGISTERs of the same batch
  must see them) and returns them for the caller to persist before the 200 OK goes out.
- ``handle`` never raises on bad input: a malformed header becomes the status its ``ParseError``
  names; everything else the registrar refuses has its own status and a reason phrase saying why.
- Reason phrases only ever hold printable ASCII; the flow-token key is never seen here (the codec
  is opaque) and tokens appear only inside the Path URIs they belong to.

Local choices (documented for OB-REG-05/13/17, REG3261-01):
- Contacts without ``+sip.instance``/``reg-id`` are accepted as plain bindings unless
  ``require_instance`` (then 403).
- ``reg-id`` counts only when the REGISTER says ``Supported: outbound``; then more than one
  Contact with ``reg-id`` or an invalid value (0, > 2^31-1, not a number) is 400. A valid
  ``reg-id`` without ``+sip.instance`` is ignored (plain binding).
- A Request-URI or To domain this server does not serve gets 403; a non-sip/sips To gets 400;
  a non-sip/sips Contact URI gets 400 (the proxy could not route to it).
"""

from __future__ import annotations

import email.utils
import secrets
from collections.abc import Callable
from typing import Protocol

import attrs

from sipserver.outbound.flow import Flow
from sipserver.sip.build import make_response, reason_phrase
from sipserver.sip.randomness import random_hex
from sipserver.sip.errors import ParseError
from sipserver.sip.headers import Contact
from sipserver.sip.message import Request, Response
from sipserver.sip.uri import SipURI

from .binding import Binding, BindingKey, Param
from .gruu import new_temp_gruu_user, pub_gruu, temp_gruu
from .store import Change, Delete, LocationStore, Put, RemovalCause

__all__ = [
    "BindingAdded",
    "BindingRefreshed",
    "BindingRemoved",
    "BindingReplaced",
    "FlowTokenEncoder",
    "RegisterResult",
    "Registrar",
    "RegistrarEvent",
    "RegistrarSettings",
    "SUPPORTED_OPTIONS",
]

#: Option tags this registrar implements (REG3261-02): Require with anything else gets 420.
SUPPORTED_OPTIONS = frozenset({"path", "outbound", "gruu"})
#: Temporary GRUUs kept per binding (newest last); older ones stop routing.
MAX_TEMP_GRUUS = 8
_DROPPED_CONTACT_PARAMS = frozenset({"expires", "pub-gruu", "temp-gruu"})


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be a positive integer")


@attrs.frozen(slots=True)
class RegistrarSettings:
    """Registrar policy (the lead maps ``[registrar]`` onto it)."""

    min_expires: int = attrs.field(default=60, validator=_positive)
    max_expires: int = attrs.field(default=7200, validator=_positive)
    default_expires: int = attrs.field(default=3600, validator=_positive)
    flow_timer: int = attrs.field(default=120, validator=_positive)
    outbound_without_first_hop: bool = False
    gruu: bool = True
    require_instance: bool = False
    #: Most live bindings one AoR may hold; a REGISTER that would exceed it gets 403.
    max_bindings_per_aor: int = attrs.field(default=100, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if not self.min_expires <= self.default_expires <= self.max_expires:
            raise ValueError("need min_expires <= default_expires <= max_expires")


class FlowTokenEncoder(Protocol):
    """The part of ``FlowTokenCodec`` the registrar uses (RFC 5626 §5.2)."""

    def encode(self, flow: Flow) -> str: ...


# ------------------------------------------------------------------------------ events


@attrs.frozen(slots=True)
class BindingAdded:
    aor: str
    key: BindingKey
    binding: Binding


@attrs.frozen(slots=True)
class BindingRefreshed:
    """Same Call-ID, same flow, same Contact URI: only the expiry (and CSeq) moved."""

    aor: str
    key: BindingKey
    binding: Binding


@attrs.frozen(slots=True)
class BindingReplaced:
    """Same key but a new Call-ID, flow or Contact URI (OB-REG-07: UA rebooted or reconnected)."""

    aor: str
    key: BindingKey
    binding: Binding
    previous: Binding


@attrs.frozen(slots=True)
class BindingRemoved:
    aor: str
    key: BindingKey
    cause: RemovalCause


RegistrarEvent = BindingAdded | BindingRefreshed | BindingReplaced | BindingRemoved


@attrs.frozen(slots=True)
class RegisterResult:
    """What ``handle`` produced. ``changes`` were already applied to the store and must be
    persisted before ``response`` is sent. ``outbound_flow``: a binding now uses the arrival flow
    with outbound, so the runtime should hold the flow to the Flow-Timer keep-alive deadline.
    ``flow_token``: the arrival flow's token when any binding stored by this request is tied to
    it (outbound or not)."""

    response: Response
    changes: list[Change] = attrs.field(factory=list)
    events: list[RegistrarEvent] = attrs.field(factory=list)
    outbound_flow: bool = False
    flow_token: str | None = None
    aor: str | None = None


class _Reject(Exception):
    """Internal: abort the REGISTER with this status."""

    def __init__(self, status: int, detail: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or []


def _phrase(status: int, detail: str | None = None) -> str:
    """Standard reason phrase, with the detail in parentheses; printable ASCII only."""
    base = reason_phrase(status)
    if not detail:
        return base
    clean = "".join(ch if " " <= ch <= "~" else "?" for ch in detail)[:120]
    return f"{base} ({clean})"


@attrs.frozen(slots=True)
class _Plan:
    """One Contact's outcome before anything is applied."""

    change: Change | None
    event: RegistrarEvent | None


class Registrar:
    """Applies REGISTER requests to a ``LocationStore``."""

    def __init__(
        self,
        settings: RegistrarSettings,
        store: LocationStore,
        codec: FlowTokenEncoder,
        *,
        is_local_domain: Callable[[str], bool],
        random_token: Callable[[int], str] = secrets.token_urlsafe,
    ) -> None:
        self.settings = settings
        self.store = store
        self._codec = codec
        self._is_local = is_local_domain
        self._random_token = random_token

    # ------------------------------------------------------------------ entry point
    def handle(self, req: Request, flow: Flow, *, now: float, local_uri: SipURI) -> RegisterResult:
        """Process one REGISTER that arrived on ``flow`` (RFC 3261 §10.3 steps 1-8)."""
        try:
            return self._handle(req, flow, now, local_uri)
        except _Reject as rej:
            return RegisterResult(self._error(req, rej.status, rej.detail, rej.headers))
        except ParseError as err:
            status = err.status if 400 <= err.status < 700 else 400
            return RegisterResult(self._error(req, status, err.reason))

    def _error(
        self, req: Request, status: int, detail: str, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        return make_response(
            req, status, _phrase(status, detail), to_tag=random_hex(6), headers=headers
        )

    def _handle(self, req: Request, flow: Flow, now: float, local_uri: SipURI) -> RegisterResult:
        s = self.settings
        if req.method != "REGISTER":
            raise _Reject(405, "only REGISTER", [("Allow", "REGISTER")])

        # Step 1: the Request-URI names a domain we serve (REG3261-01).
        ruri = req.uri
        if not isinstance(ruri, SipURI):
            raise _Reject(416, f"{ruri.scheme} Request-URI")
        if not self._is_local(ruri.host.lower()):
            raise _Reject(403, "domain not served here")
        # Step 2: every option tag in Require is one we implement (REG3261-02, PATH-03).
        unknown = req.require - SUPPORTED_OPTIONS
        if unknown:
            raise _Reject(
                420, "unsupported extension", [("Unsupported", ", ".join(sorted(unknown)))]
            )
        # Step 5: the AoR comes from To and must be ours (REG3261-04; RFC 4475 unksm2).
        to_uri = req.to.uri
        if not isinstance(to_uri, SipURI):
            raise _Reject(400, "To is not a sip or sips URI")
        if not self._is_local(to_uri.host.lower()):
            raise _Reject(403, "domain not served here")
        aor = to_uri.aor

        contacts = req.contacts
        call_id = req.call_id
        cseq = req.cseq.seq
        supported = req.supported

        ctx = _Context(req, flow, now, local_uri, aor, call_id, cseq)
        if not contacts:
            plans: list[_Plan] = []  # a query (REG3261-09)
        elif any(c.star for c in contacts):
            plans = self._plan_wildcard(ctx, contacts)
        else:
            plans = self._plan_contacts(ctx, contacts, supported)

        changes = [p.change for p in plans if p.change is not None]
        events = [p.event for p in plans if p.event is not None]
        self._check_capacity(aor, now, changes)
        self.store.apply(changes)

        # Step 8: 200 OK listing every current binding with the time it has left.
        headers: list[tuple[str, str]] = []
        if ctx.outbound_applied:
            headers.append(("Require", "outbound"))  # OB-REG-10
            headers.append(("Flow-Timer", str(s.flow_timer)))  # OB-EP-15
        with_gruu = s.gruu and "gruu" in supported
        for b in self.store.lookup(aor, now):
            headers.append(
                ("Contact", b.contact_value(now, self._gruu_params(b, to_uri, with_gruu)))
            )
        puts = [c.binding for c in changes if isinstance(c, Put)]
        if puts and "path" in supported:
            # PATH-04: the Path stored, same order. Our own entry is shown only when it is an
            # outbound one (OB-CS-03: a Path of ours that we echo carries ob and a real token).
            echo = list(ctx.received_path)
            if ctx.own_ob_path is not None and any(b.outbound and b.flow_token for b in puts):
                echo.insert(0, ctx.own_ob_path)
            if echo:
                headers.append(("Path", ", ".join(echo)))
        headers.append(("Supported", "path, outbound, gruu" if s.gruu else "path, outbound"))
        headers.append(("Date", _http_date(now)))
        response = make_response(req, 200, to_tag=random_hex(6), headers=headers)
        token = next((b.flow_token for b in puts if b.flow_token is not None), None)
        return RegisterResult(
            response=response,
            changes=changes,
            events=events,
            outbound_flow=any(b.outbound and b.flow_token is not None for b in puts),
            flow_token=token,
            aor=aor,
        )

    # ------------------------------------------------------------------ planning
    def _plan_wildcard(self, ctx: _Context, contacts: list[Contact]) -> list[_Plan]:
        """RFC 3261 §10.3 step 6: ``*`` alone, with ``Expires: 0``, removes every binding
        (REG3261-05, OB-REG-14), subject to the CSeq rule per binding."""
        if len(contacts) != 1:
            raise _Reject(400, "Contact: * must be the only Contact")
        if ctx.req.expires != 0:
            raise _Reject(400, "Contact: * needs Expires: 0")
        live = self.store.lookup(ctx.aor, ctx.now)
        for b in live:
            if b.call_id == ctx.call_id and ctx.cseq <= b.cseq:
                raise _Reject(500, "out of order CSeq")
        return [
            _Plan(
                Delete(b.key, RemovalCause.UNREGISTERED),
                BindingRemoved(ctx.aor, b.key, RemovalCause.UNREGISTERED),
            )
            for b in live
        ]

    def _plan_contacts(
        self, ctx: _Context, contacts: list[Contact], supported: frozenset[str]
    ) -> list[_Plan]:
        s = self.settings
        req = ctx.req
        header_expires = req.expires

        # RFC 5626 §6: outbound applies when the UA supports it, the Contact has a reg-id (and
        # an instance) and we are the first hop or the first hop marked its Path with ob.
        reg_contacts = (
            [c for c in contacts if c.reg_id_text is not None] if "outbound" in supported else []
        )
        if len(reg_contacts) > 1:
            raise _Reject(400, "more than one Contact with reg-id")  # OB-REG-12
        reg_contact = reg_contacts[0] if reg_contacts else None
        if reg_contact is not None and reg_contact.reg_id is None:
            raise _Reject(400, "invalid reg-id")  # OB-REG-17
        paths = req.paths
        ctx.received_path = tuple(p.raw.strip() for p in paths)
        first_hop = len(req.vias) == 1  # OB-CS-01
        top_uri = paths[0].uri if paths else None
        top_ob = isinstance(top_uri, SipURI) and top_uri.has_param("ob")
        if reg_contact is not None and not (first_hop or top_ob or s.outbound_without_first_hop):
            raise _Reject(439, "first hop lacks outbound support")  # OB-REG-03
        outbound_contact = (
            reg_contact if reg_contact is not None and reg_contact.instance_id is not None else None
        )
        ctx.outbound_applied = outbound_contact is not None

        # Expiry and policy checks for every Contact before anything changes (REG3261-06/07).
        expiries: list[tuple[int, float]] = []
        for c in contacts:
            if not isinstance(c.uri, SipURI):
                raise _Reject(400, "Contact URI must be sip or sips")
            requested = c.expires
            if requested is None:
                requested = header_expires if header_expires is not None else s.default_expires
            if 0 < requested < s.min_expires:
                raise _Reject(423, "expiry too short", [("Min-Expires", str(s.min_expires))])
            if s.require_instance and requested > 0 and c.instance_id is None:
                raise _Reject(403, "Contact without +sip.instance refused")
            # q is read here so a bad value is a 400 before anything changes.
            expiries.append((min(requested, s.max_expires), c.q))

        return [
            self._plan_one(ctx, c, expires, q, c is outbound_contact, first_hop, supported)
            for c, (expires, q) in zip(contacts, expiries, strict=True)
        ]

    def _plan_one(
        self,
        ctx: _Context,
        c: Contact,
        expires: int,
        q: float,
        is_outbound: bool,
        first_hop: bool,
        supported: frozenset[str],
    ) -> _Plan:
        uri = c.sip_uri
        if is_outbound:
            assert c.instance_id is not None and c.reg_id is not None
            key = BindingKey.for_instance(ctx.aor, c.instance_id, c.reg_id)  # OB-REG-07/08
        else:
            key = BindingKey.for_contact(ctx.aor, uri)  # OB-REG-06
        stored = self.store.get(key)
        old = stored if stored is not None and stored.expires_at > ctx.now else None
        # RFC 3261 §10.3 step 7: same Call-ID needs a higher CSeq (REG3261-08).
        if old is not None and old.call_id == ctx.call_id and ctx.cseq <= old.cseq:
            raise _Reject(500, "out of order CSeq")

        if expires == 0:
            if stored is None:
                return _Plan(None, None)
            removed = BindingRemoved(ctx.aor, key, RemovalCause.UNREGISTERED) if old else None
            return _Plan(Delete(key, RemovalCause.UNREGISTERED), removed)

        path, token = self._route_to_ua(ctx, is_outbound, first_hop)
        same_session = (
            old is not None and old.call_id == ctx.call_id and old.instance_id == c.instance_id
        )
        temps: tuple[str, ...] = old.temp_gruus if same_session and old is not None else ()
        if self.settings.gruu and "gruu" in supported and c.instance_id is not None:
            # GRUU-03: a new temporary GRUU per registration; earlier ones of this Call-ID stay.
            temps = (*temps, new_temp_gruu_user(self._random_token))[-MAX_TEMP_GRUUS:]
        flow = ctx.flow
        binding = Binding(
            key=key,
            aor=ctx.aor,
            contact_uri=c.uri_text,
            expires_at=ctx.now + expires,
            call_id=ctx.call_id,
            cseq=ctx.cseq,
            contact_params=tuple(
                (k, v) for k, v in c.params if k.lower() not in _DROPPED_CONTACT_PARAMS
            ),
            instance=c.instance,
            instance_id=c.instance_id,
            reg_id=c.reg_id if is_outbound else None,
            q=q,
            path=path,
            outbound=is_outbound,
            flow_token=token,
            transport=flow.transport.value.lower(),
            source=_hostport(flow.remote),
            user_agent=ctx.req.header("user-agent"),
            registered_at=old.registered_at if same_session and old is not None else ctx.now,
            temp_gruus=temps,
        )
        event: RegistrarEvent
        if old is None:
            event = BindingAdded(ctx.aor, key, binding)
        elif (
            old.call_id != ctx.call_id
            or old.flow_token != token
            or old.contact_uri != binding.contact_uri
            or old.path != path
        ):
            event = BindingReplaced(ctx.aor, key, binding, old)
        else:
            event = BindingRefreshed(ctx.aor, key, binding)
        return _Plan(Put(binding), event)

    def _route_to_ua(
        self, ctx: _Context, is_outbound: bool, first_hop: bool
    ) -> tuple[tuple[str, ...], str | None]:
        """The route set towards the UA and the flow token it depends on (OB-REG-09, PATH-04).

        First hop: our own Path URI naming the arrival flow goes on top, with ``ob`` when
        outbound applies; without outbound only over connection-oriented transports (a
        WebSocket or NATed TCP phone is reachable only over its connection; RFC 7118 §5, WS-08).
        Direct UDP without outbound: no Path, requests go to the Contact."""
        received = ctx.received_path
        if not first_hop or not (is_outbound or ctx.flow.transport.reliable):
            return received, None
        token = ctx.token(self._codec)
        own = _own_path(ctx.local_uri, token, ob=is_outbound)
        if is_outbound:
            ctx.own_ob_path = own
        return (own, *received), token

    def _check_capacity(self, aor: str, now: float, changes: list[Change]) -> None:
        limit = self.settings.max_bindings_per_aor
        keys = {b.key for b in self.store.lookup(aor, now)}
        before = len(keys)
        for change in changes:
            if isinstance(change, Put):
                keys.add(change.key)
            else:
                keys.discard(change.key)
        if len(keys) > limit and len(keys) > before:
            raise _Reject(403, f"too many contacts (limit {limit})")

    def _gruu_params(self, b: Binding, to_uri: SipURI, enabled: bool) -> tuple[Param, ...]:
        """GRUU-01/02: pub-gruu and the newest temp-gruu, quoted, when the UA asked for GRUUs."""
        if not enabled or b.instance_id is None:
            return ()
        params: list[Param] = [("pub-gruu", f'"{pub_gruu(to_uri, b.instance_id)}"')]
        if b.temp_gruus:
            params.append(("temp-gruu", f'"{temp_gruu(to_uri, b.temp_gruus[-1])}"'))
        return tuple(params)


@attrs.define
class _Context:
    """Per-request working state shared by the planning steps."""

    req: Request
    flow: Flow
    now: float
    local_uri: SipURI
    aor: str
    call_id: str
    cseq: int
    received_path: tuple[str, ...] = ()
    outbound_applied: bool = False
    own_ob_path: str | None = None
    _flow_token: str | None = attrs.field(default=None, init=False)

    def token(self, codec: FlowTokenEncoder) -> str:
        """The arrival flow's token, minted once per request."""
        if self._flow_token is None:
            try:
                self._flow_token = codec.encode(self.flow)
            except ValueError:
                raise _Reject(500, "arrival flow cannot be named by a flow token") from None
        return self._flow_token


def _own_path(local_uri: SipURI, token: str, *, ob: bool) -> str:
    """``<sip:TOKEN@our-host:port;transport=x;lr[;ob]>`` (RFC 5626 §5.1, RFC 3327 §4)."""
    params: list[Param] = [(k, v) for k, v in local_uri.params if k.lower() not in ("lr", "ob")]
    params.append(("lr", None))
    if ob:
        params.append(("ob", None))
    uri = local_uri.replace(user=token, password=None, params=params, headers=None)
    return f"<{uri}>"


def _hostport(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_date_cache: tuple[int, str] = (-1, "")


def _http_date(now: float) -> str:
    """RFC 3261 §20.17 Date, formatted once per second (it is on every 200 OK)."""
    global _date_cache
    second = int(now)
    if _date_cache[0] != second:
        _date_cache = (second, email.utils.formatdate(second, usegmt=True))
    return _date_cache[1]
