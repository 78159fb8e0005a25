"""sipserver: SIP Outbound (RFC 5626) edge proxy and registrar in one trio process."""

__version__ = "0.1.0"
