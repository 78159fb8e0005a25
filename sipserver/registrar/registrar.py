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

Speed (this runs for every REGISTER): each Contact parameter and header view is read once; the
200 OK is built here in one pass over the request's lines (the same message ``make_response``
would build), with the constant lines shared between responses; our own Path URI is rendered
once per listener, only the flow token is put in per request.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from typing import Protocol

import attrs

from sipserver.outbound.flow import Flow, Transport
from sipserver.sip.build import RESPONSE_COPIED, make_response, phrase_with_detail, reason_phrase
from sipserver.sip.errors import ParseError
from sipserver.sip.headers import Contact
from sipserver.sip.message import Header, Request, Response
from sipserver.sip.randomness import random_hex
from sipserver.sip.uri import SipURI

from .binding import INSTANCE, Binding, BindingKey, Param
from .gruu import new_temp_gruu_user, pub_gruu, temp_gruu, token_urlsafe
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


_POSITIVE_SETTINGS = ("min_expires", "max_expires", "default_expires", "flow_timer", "flow_timer_udp",
                      "max_bindings_per_aor")


@attrs.frozen(slots=True)
class RegistrarSettings:
    """Registrar policy (the lead maps ``[registrar]`` onto it).

    Plain defaults and one check after init rather than ``attrs.field`` validators: the mypyc
    build (sipserver/native.py) cannot compile a class attribute whose value is a field
    definition."""

    min_expires: int = 60
    max_expires: int = 7200
    default_expires: int = 3600
    flow_timer: int = 120
    #: RFC 5626 §4.4.1: the keepalive interval must keep the NAT binding; UDP ones are short.
    flow_timer_udp: int = 25
    outbound_without_first_hop: bool = False
    gruu: bool = True
    require_instance: bool = False
    #: Most live bindings one AoR may hold; a REGISTER that would exceed it gets 403.
    max_bindings_per_aor: int = 100

    def __attrs_post_init__(self) -> None:
        for name in _POSITIVE_SETTINGS:
            value: object = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer")
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
    changes: list[Change]
    events: list[RegistrarEvent]
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


class Registrar:
    """Applies REGISTER requests to a ``LocationStore``."""

    def __init__(
        self,
        settings: RegistrarSettings,
        store: LocationStore,
        codec: FlowTokenEncoder,
        *,
        is_local_domain: Callable[[str], bool],
        random_token: Callable[[int], str] = token_urlsafe,
    ) -> None:
        self.settings = settings
        self.store = store
        self._codec = codec
        self._is_local = is_local_domain
        self._random_token = random_token
        # Our own Path URI around the flow token, per local URI text: (before, after, after-ob).
        self._own_paths: dict[str, tuple[str, str, str]] = {}

    # ------------------------------------------------------------------ entry point
    def handle(self, req: Request, flow: Flow, *, now: float, local_uri: SipURI) -> RegisterResult:
        """Process one REGISTER that arrived on ``flow`` (RFC 3261 §10.3 steps 1-8)."""
        try:
            return self._handle(req, flow, now, local_uri)
        except _Reject as rej:
            return RegisterResult(self._error(req, rej.status, rej.detail, rej.headers), [], [])
        except ParseError as err:
            status = err.status if 400 <= err.status < 700 else 400
            return RegisterResult(self._error(req, status, err.reason), [], [])

    def _error(
        self, req: Request, status: int, detail: str, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        return make_response(
            req, status, phrase_with_detail(status, detail), to_tag=random_hex(6), headers=headers
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

        ctx = _Context(req, flow, now, local_uri, aor, call_id, cseq, supported)
        changes: list[Change] = []
        events: list[RegistrarEvent] = []
        if not contacts:
            pass  # a query (REG3261-09)
        elif contacts[0].star if len(contacts) == 1 else any(c.star for c in contacts):
            self._plan_wildcard(ctx, contacts, changes, events)
        else:
            self._plan_contacts(ctx, contacts, changes, events)

        puts = [c.binding for c in changes if isinstance(c, Put)]
        if puts:
            self._check_capacity(aor, now, changes, len(puts))
        store = self.store
        store.apply(changes)

        # Step 8: 200 OK listing every current binding with the time it has left.
        headers: list[Header] = []
        if ctx.outbound_applied:
            headers.append(_REQUIRE_OUTBOUND)  # OB-REG-10
            headers.append(_flow_timer_header(self.flow_timer(flow)))  # OB-EP-15
        if s.gruu and "gruu" in supported:
            for b in store.lookup(aor, now):
                value = b.contact_value(now, _gruu_params(b, to_uri))
                headers.append(Header("Contact", "contact", value))
        else:
            for b in store.lookup(aor, now):
                headers.append(Header("Contact", "contact", b.contact_value(now)))
        token: str | None = None
        outbound_flow = False
        if puts:
            for b in puts:
                flow_token = b.flow_token
                if flow_token is not None:
                    if token is None:
                        token = flow_token
                    if b.outbound:
                        outbound_flow = True
            if "path" in supported:
                # PATH-04: the Path stored, same order. Our own entry is shown only when it is an
                # outbound one (OB-CS-03: a Path of ours that we echo carries ob and a real
                # token).
                own = ctx.own_ob_path
                if own is not None and any(b.outbound and b.flow_token for b in puts):
                    headers.append(Header("Path", "path", ", ".join((own, *ctx.received_path))))
                elif ctx.received_path:
                    headers.append(Header("Path", "path", ", ".join(ctx.received_path)))
        headers.append(_SUPPORTED_GRUU if s.gruu else _SUPPORTED)
        headers.append(_date_header(now))
        return RegisterResult(
            response=_ok_response(req, headers),
            changes=changes,
            events=events,
            outbound_flow=outbound_flow,
            flow_token=token,
            aor=aor,
        )

    def flow_timer(self, flow: Flow) -> int:
        """The Flow-Timer for an outbound flow of this transport (RFC 5626 §4.4.1)."""
        return self.settings.flow_timer_udp if flow.transport is Transport.UDP else self.settings.flow_timer

    # ------------------------------------------------------------------ planning
    def _plan_wildcard(
        self,
        ctx: _Context,
        contacts: list[Contact],
        changes: list[Change],
        events: list[RegistrarEvent],
    ) -> None:
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
        for b in live:
            changes.append(Delete(b.key, RemovalCause.UNREGISTERED))
            events.append(BindingRemoved(ctx.aor, b.key, RemovalCause.UNREGISTERED))

    def _plan_contacts(
        self,
        ctx: _Context,
        contacts: list[Contact],
        changes: list[Change],
        events: list[RegistrarEvent],
    ) -> None:
        """Check every Contact, then plan each one's change (in Contact order). Each Contact
        parameter is read once; the checks run in the order that decides which error a request
        with several problems gets."""
        s = self.settings
        req = ctx.req
        header_expires = req.expires

        # RFC 5626 §6: outbound applies when the UA supports it, the Contact has a reg-id (and
        # an instance) and we are the first hop or the first hop marked its Path with ob.
        reg_contact: Contact | None = None
        reg_id: int | None = None
        if "outbound" in ctx.supported:
            for c in contacts:
                if c.reg_id_text is not None:
                    if reg_contact is not None:
                        raise _Reject(400, "more than one Contact with reg-id")  # OB-REG-12
                    reg_contact = c
            if reg_contact is not None:
                reg_id = reg_contact.reg_id
                if reg_id is None:
                    raise _Reject(400, "invalid reg-id")  # OB-REG-17
        paths = req.paths
        top_ob = False
        if paths:
            ctx.received_path = tuple([p.raw.strip() for p in paths])
            top_uri = paths[0].uri
            top_ob = isinstance(top_uri, SipURI) and top_uri.has_param("ob")
        first_hop = ctx.first_hop = len(req.vias) == 1  # OB-CS-01
        if reg_contact is not None and not (first_hop or top_ob or s.outbound_without_first_hop):
            raise _Reject(439, "first hop lacks outbound support")  # OB-REG-03

        # Expiry and policy checks for every Contact before anything changes (REG3261-06/07).
        checked: list[tuple[Contact, SipURI, int, float, str | None]] = []
        min_expires = s.min_expires
        max_expires = s.max_expires
        require_instance = s.require_instance
        for c in contacts:
            uri = c.uri
            if not isinstance(uri, SipURI):
                raise _Reject(400, "Contact URI must be sip or sips")
            requested = c.expires
            if requested is None:
                requested = header_expires if header_expires is not None else s.default_expires
            if 0 < requested < min_expires:
                raise _Reject(423, "expiry too short", [("Min-Expires", str(min_expires))])
            instance_id = c.instance_id
            if require_instance and requested > 0 and instance_id is None:
                raise _Reject(403, "Contact without +sip.instance refused")
            # q is read here so a bad value is a 400 before anything changes.
            q = c.q
            expires = requested if requested < max_expires else max_expires
            checked.append((c, uri, expires, q, instance_id))

        aor = ctx.aor
        for c, uri, expires, q, instance_id in checked:
            if c is reg_contact and instance_id is not None:
                assert reg_id is not None
                ctx.outbound_applied = True
                key = BindingKey(aor, INSTANCE, instance_id, reg_id)  # OB-REG-07/08
                self._plan_one(ctx, c, key, expires, q, instance_id, reg_id, changes, events)
            else:
                key = BindingKey.for_contact(aor, uri)  # OB-REG-06
                self._plan_one(ctx, c, key, expires, q, instance_id, None, changes, events)

    def _plan_one(
        self,
        ctx: _Context,
        c: Contact,
        key: BindingKey,
        expires: int,
        q: float,
        instance_id: str | None,
        reg_id: int | None,
        changes: list[Change],
        events: list[RegistrarEvent],
    ) -> None:
        """One Contact's change and event. ``reg_id`` is set exactly when outbound applies to
        this Contact (its key is then the instance key)."""
        is_outbound = reg_id is not None
        stored = self.store.get(key)
        now = ctx.now
        old = stored if stored is not None and stored.expires_at > now else None
        call_id = ctx.call_id
        # RFC 3261 §10.3 step 7: same Call-ID needs a higher CSeq (REG3261-08).
        if old is not None and old.call_id == call_id and ctx.cseq <= old.cseq:
            raise _Reject(500, "out of order CSeq")

        if expires == 0:
            if stored is None:
                return
            changes.append(Delete(key, RemovalCause.UNREGISTERED))
            if old is not None:
                events.append(BindingRemoved(ctx.aor, key, RemovalCause.UNREGISTERED))
            return

        path, token = self._route_to_ua(ctx, is_outbound)
        same_session = old is not None and old.call_id == call_id and old.instance_id == instance_id
        temps: tuple[str, ...] = old.temp_gruus if same_session and old is not None else ()
        if instance_id is not None and self.settings.gruu and "gruu" in ctx.supported:
            # GRUU-03: a new temporary GRUU per registration; earlier ones of this Call-ID stay.
            temps = (*temps, new_temp_gruu_user(self._random_token))[-MAX_TEMP_GRUUS:]
        transport, source, user_agent = ctx.origin()
        uri_text = c.uri_text
        binding = Binding(
            key=key,
            aor=ctx.aor,
            contact_uri=uri_text,
            expires_at=now + expires,
            call_id=call_id,
            cseq=ctx.cseq,
            contact_params=tuple(
                [p for p in c.params if p[0].lower() not in _DROPPED_CONTACT_PARAMS]
            ),
            instance=c.instance,
            instance_id=instance_id,
            reg_id=reg_id,
            q=q,
            path=path,
            outbound=is_outbound,
            flow_token=token,
            transport=transport,
            source=source,
            user_agent=user_agent,
            registered_at=old.registered_at if same_session and old is not None else now,
            temp_gruus=temps,
        )
        changes.append(Put(binding))
        if old is None:
            events.append(BindingAdded(ctx.aor, key, binding))
        elif (
            old.call_id != call_id
            or old.flow_token != token
            or old.contact_uri != uri_text
            or old.path != path
        ):
            events.append(BindingReplaced(ctx.aor, key, binding, old))
        else:
            events.append(BindingRefreshed(ctx.aor, key, binding))

    def _route_to_ua(self, ctx: _Context, is_outbound: bool) -> tuple[tuple[str, ...], str | None]:
        """The route set towards the UA and the flow token it depends on (OB-REG-09, PATH-04).

        First hop: our own Path URI naming the arrival flow goes on top, with ``ob`` when
        outbound applies. Without outbound too (an *implicit flow*, DESIGN.md "Flows for every
        phone"): a phone behind NAT is reachable only through the mapping its REGISTER opened
        (UDP source address and port, the connection on TCP/TLS/WS; RFC 7118 §5), never at its
        private Contact, which is still stored untouched. Behind another proxy: its Path only."""
        received = ctx.received_path
        if not ctx.first_hop:
            return received, None
        token = ctx.token(self._codec)
        own = self._own_path(ctx.local_uri, token, ob=is_outbound)
        if is_outbound:
            ctx.own_ob_path = own
        return (own, *received), token

    def _own_path(self, local_uri: SipURI, token: str, *, ob: bool) -> str:
        """``<sip:TOKEN@our-host:port;transport=x;lr[;ob]>`` (RFC 5626 §5.1, RFC 3327 §4).

        Only the token changes between requests on one listener, so the text around it is
        rendered once per local URI."""
        text = str(local_uri)
        parts = self._own_paths.get(text)
        if parts is None:
            parts = _own_path_parts(local_uri)
            if len(self._own_paths) >= 256:
                self._own_paths.clear()
            self._own_paths[text] = parts
        before, after, after_ob = parts
        return f"{before}{token}{after_ob if ob else after}"

    def _check_capacity(self, aor: str, now: float, changes: list[Change], puts: int) -> None:
        """403 when the REGISTER would leave the AoR with more than ``max_bindings_per_aor``
        live bindings and more than it had (a full AoR may still refresh or shrink)."""
        limit = self.settings.max_bindings_per_aor
        live = self.store.lookup(aor, now)
        if len(live) + puts <= limit:
            return  # each Put adds at most one binding
        keys = {b.key for b in live}
        before = len(keys)
        for change in changes:
            if isinstance(change, Put):
                keys.add(change.key)
            else:
                keys.discard(change.key)
        if len(keys) > limit and len(keys) > before:
            raise _Reject(403, f"too many contacts (limit {limit})")


class _Context:
    """Per-request working state shared by the planning steps."""

    __slots__ = ("req", "flow", "now", "local_uri", "aor", "call_id", "cseq", "supported",
                 "received_path", "first_hop", "outbound_applied", "own_ob_path", "_flow_token", "_origin")

    def __init__(
        self, req: Request, flow: Flow, now: float, local_uri: SipURI, aor: str, call_id: str, cseq: int,
        supported: frozenset[str],
    ) -> None:
        self.req = req
        self.flow = flow
        self.now = now
        self.local_uri = local_uri
        self.aor = aor
        self.call_id = call_id
        self.cseq = cseq
        self.supported = supported
        self.received_path: tuple[str, ...] = ()
        self.first_hop = False
        self.outbound_applied = False
        self.own_ob_path: str | None = None
        self._flow_token: str | None = None
        self._origin: tuple[str, str, str | None] | None = None

    def token(self, codec: FlowTokenEncoder) -> str:
        """The arrival flow's token, minted once per request."""
        if self._flow_token is None:
            try:
                self._flow_token = codec.encode(self.flow)
            except ValueError:
                raise _Reject(500, "arrival flow cannot be named by a flow token") from None
        return self._flow_token

    def origin(self) -> tuple[str, str, str | None]:
        """Transport, source address and User-Agent: what every binding made from this
        request records about where it came from."""
        origin = self._origin
        if origin is None:
            flow = self.flow
            origin = self._origin = (
                _TRANSPORT_NAMES[flow.transport],
                _hostport(flow.remote),
                self.req.header("user-agent"),
            )
        return origin


_TRANSPORT_NAMES = {t: t.value.lower() for t in Transport}


def _gruu_params(b: Binding, to_uri: SipURI) -> tuple[Param, ...]:
    """GRUU-01/02: pub-gruu and the newest temp-gruu, quoted, when the UA asked for GRUUs."""
    if b.instance_id is None:
        return ()
    pub: Param = ("pub-gruu", f'"{pub_gruu(to_uri, b.instance_id)}"')
    if b.temp_gruus:
        return (pub, ("temp-gruu", f'"{temp_gruu(to_uri, b.temp_gruus[-1])}"'))
    return (pub,)


def _own_path_parts(local_uri: SipURI) -> tuple[str, str, str]:
    """The text of ``_own_path`` before and after the token (without and with ``ob``): the
    local URI with the token as user, no password or headers, ``lr`` (and ``ob``) last."""
    params: list[Param] = [(k, v) for k, v in local_uri.params if k.lower() not in ("lr", "ob")]
    marker = "\x00token\x00"
    uri = str(local_uri.replace(user=marker, password=None, params=params, headers=None))
    before, _, after = uri.partition(marker)
    return f"<{before}", f"{after};lr>", f"{after};lr;ob>"


# Header lines every 200 OK may carry. ``Header`` objects are never changed in place (a message
# edit replaces them), so one object can sit in any number of responses.
_OK = reason_phrase(200)
_REQUIRE_OUTBOUND = Header("Require", "require", "outbound")
_SUPPORTED = Header("Supported", "supported", "path, outbound")
_SUPPORTED_GRUU = Header("Supported", "supported", "path, outbound, gruu")


def _ok_response(req: Request, extra: list[Header]) -> Response:
    """``make_response(req, 200, to_tag=random_hex(6), headers=extra)``, the same message, built
    without making ``Header`` objects for the request lines it does not copy (this is on every
    REGISTER). RFC 3261 §8.2.6.2: Via, From, To, Call-ID and CSeq copied; To gets a tag unless
    it has one (the To view was parsed already, so it answers that). Kept equal to
    ``make_response`` by tests/unit/test_registrar_fast_response.py."""
    hdrs = req.copy_header_lines(RESPONSE_COPIED)
    if not req.to.has_param("tag"):
        for i, h in enumerate(hdrs):
            if h.key == "to":
                hdrs[i] = Header(h.name, h.key, f"{h.value};tag={random_hex(6)}")
                break
    hdrs.extend(extra)
    return Response(200, _OK, hdrs)


_flow_timer_headers: dict[int, Header] = {}


def _flow_timer_header(seconds: int) -> Header:
    header = _flow_timer_headers.get(seconds)
    if header is None:
        if len(_flow_timer_headers) >= 16:
            _flow_timer_headers.clear()
        header = _flow_timer_headers[seconds] = Header("Flow-Timer", "flow-timer", str(seconds))
    return header


_date_header_cache: Header = Header("Date", "date", "")
_date_second = -1


def _date_header(now: float) -> Header:
    """RFC 3261 §20.17 Date, formatted once per second (it is on every 200 OK)."""
    global _date_header_cache, _date_second
    second = int(now)
    if second != _date_second:
        _date_header_cache = Header("Date", "date", email.utils.formatdate(second, usegmt=True))
        _date_second = second
    return _date_header_cache


def _hostport(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
