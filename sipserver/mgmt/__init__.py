"""Operability: the management HTTP API (``api``, ``http``), metrics and SIP tracing.

Only this package, ``transport/`` and ``runtime.py`` import trio; ``metrics`` and ``trace`` are
pure and unit-tested with plain calls."""
