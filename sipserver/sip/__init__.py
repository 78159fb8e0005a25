"""Sans-IO SIP: message model, parser, serializer, URIs and typed header views."""

from .build import (
    make_ack_for_non2xx,
    make_cancel,
    make_request,
    make_response,
    new_branch,
    new_tag,
    reason_phrase,
)
from .errors import ParseError
from .headers import Contact, CSeq, NameAddr, Via
from .message import Header, Message, Request, Response
from .parser import parse_message
from .uri import URI, AbsoluteURI, SipURI, parse_sip_uri, parse_uri

__all__ = [
    "AbsoluteURI", "CSeq", "Contact", "Header", "Message", "NameAddr", "ParseError", "Request",
    "Response", "SipURI", "URI", "Via", "make_ack_for_non2xx", "make_cancel", "make_request",
    "make_response", "new_branch", "new_tag", "parse_message", "parse_sip_uri", "parse_uri",
    "reason_phrase",
]
