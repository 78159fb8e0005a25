"""sipserver: SIP Outbound (RFC 5626) edge proxy and registrar in one trio process."""

from . import native

__version__ = "0.1.0"

# The optional mypyc build of the hot sans-IO modules, when one is built and matches the
# sources (sipserver/native.py); pure Python otherwise.
native.install()
