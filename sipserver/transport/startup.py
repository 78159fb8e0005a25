"""Start-up fitting of the transport limits to the process: ``limits.max_connections`` against the
open-file limit (RLIMIT_NOFILE), and the limits the flow table takes from ``[limits]``.

Every connection is a file descriptor. A server allowed 20,000 connections under the common soft
limit of 1,024 fails at connection 1,000 or so with EMFILE, in the accept loop and in every file
the process opens then (the store, a TLS certificate, a DNS socket), far from the setting that
caused it. So at start: the soft limit is raised to what ``max_connections`` needs (an
unprivileged process may raise it up to the hard limit); where the hard limit is too low,
``max_connections`` is lowered to fit and a warning names both settings and the numbers.

Lowering rather than refusing to start: the default ``max_connections`` would otherwise stop the
server on any host whose hard limit is below 20,064 (some containers and older systemd units
have 4,096), an outage caused by a setting nobody chose; lowered, the server still serves UDP
and as many connections as the process can hold, and the warning says what to change.

``plan_fd_limit`` is the pure decision (tested with made-up limits); ``fit_limits`` applies it.
"""

from __future__ import annotations

import attrs

from sipserver.config import LimitsConfig

from .connection import logger
from .flows import FlowTable

__all__ = ["FD_HEADROOM", "FdPlan", "fit_limits", "plan_fd_limit"]

# Descriptors besides connections: listening sockets, UDP sockets, the store and its writer's
# pipes, the management API, log files, DNS and TLS files opened on the way.
FD_HEADROOM = 64


@attrs.frozen
class FdPlan:
    """What to do at start: the soft limit to set (None: leave it), the ``max_connections`` to
    serve with, and the warning to log (None: nothing to say)."""

    soft: int | None
    max_connections: int
    warning: str | None = None


def plan_fd_limit(
    max_connections: int, soft: int | None, hard: int | None, headroom: int = FD_HEADROOM
) -> FdPlan:
    """The decision for RLIMIT_NOFILE ``soft``/``hard`` (None: unlimited)."""
    needed = max_connections + headroom
    if soft is None or soft >= needed:
        return FdPlan(None, max_connections)
    if hard is None or hard >= needed:
        return FdPlan(needed, max_connections)
    fit = max(1, hard - headroom)
    warning = (
        f"limits.max_connections ({max_connections}) needs {needed} open files, but the "
        f"open-file hard limit (RLIMIT_NOFILE) is {hard}: serving at most {fit} connections; "
        f"raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower "
        f"limits.max_connections"
    )
    return FdPlan(hard if hard > soft else None, fit, warning)


def fit_limits(table: FlowTable, limits: LimitsConfig) -> None:
    """At start-up, before the listeners: fit ``max_connections`` to RLIMIT_NOFILE (raising the
    soft limit when that suffices) and give the flow table ``max_udp_flows``."""
    max_connections = _fit_fd_limit(limits.max_connections)
    table.limits = attrs.evolve(
        table.limits, max_connections=max_connections, max_udp_flows=limits.max_udp_flows
    )


def _fit_fd_limit(max_connections: int) -> int:
    try:
        import resource
    except ImportError:  # not Unix: no such limit to fit
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinity = resource.RLIM_INFINITY
    plan = plan_fd_limit(
        max_connections, None if soft == infinity else soft, None if hard == infinity else hard
    )
    if plan.soft is not None:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (plan.soft, hard))
        except (OSError, ValueError) as exc:
            # Not allowed here (a sandbox): the current soft limit is all there is.
            logger.debug("cannot raise RLIMIT_NOFILE to %d: %s", plan.soft, exc)
            plan = plan_fd_limit(max_connections, soft, soft)
        else:
            logger.info(
                "raised the open-file soft limit (RLIMIT_NOFILE) from %d to %d for "
                "limits.max_connections (%d)",
                soft,
                plan.soft,
                max_connections,
            )
    if plan.warning is not None:
        logger.warning("%s", plan.warning)
    return plan.max_connections
