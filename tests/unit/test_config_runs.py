"""Issue 16: every value the configuration accepts also runs. ``check-config`` and ``run`` must
not disagree: for each numeric setting, the lowest value the config check lets through (and a
small one above it) is given to the parts the runtime builds, which must not refuse it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sipserver import parts
from sipserver.config import _SECTIONS, ConfigError, _Float, _Int, _section_fields, config_from_dict


def _lowest(check: object) -> list[object]:
    if isinstance(check, _Int):
        return [check.lo, check.lo + 1]
    if isinstance(check, _Float):
        lo = check.lo + (0.001 if check.exclusive else 0.0)
        return [lo, lo + 1.0]
    return []


CASES = [
    (section, key, value)
    for section, cls in _SECTIONS
    if section in ("auth", "rate_limit", "limits", "registrar", "transaction", "proxy")
    for key, check, _help, _default in _section_fields(cls)
    for value in _lowest(check)
]


@pytest.mark.parametrize(("section", "key", "value"), CASES, ids=[f"{s}.{k}={v}" for s, k, v in CASES])
def test_lowest_accepted_value_builds_the_parts(tmp_path: Path, section: str, key: str, value: Any) -> None:
    data: dict[str, Any] = {
        "server": {"data_dir": str(tmp_path), "domains": ["example.com"]},
        "users": {"alice": {"password": "secret"}},
        "auth": {"realm": "example.com"},
    }
    data.setdefault(section, {})[key] = value
    try:
        cfg = config_from_dict(data)
    except ConfigError:
        return  # refused together with a related key's default (min > max): the check says so
    codec, key_bytes = parts.flow_token_codec(cfg)
    parts.auth_gate(cfg, key_bytes, {})
    parts.flow_table(cfg)
    parts.registrar_settings(cfg)
    parts.rate_limiter(cfg)
