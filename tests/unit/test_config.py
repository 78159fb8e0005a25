"""sipserver.config: TOML -> validated Config, listen specs, overrides, reference and example.

What a user sees: defaults that match the documentation, errors that name the exact key to fix,
and docs/config.md / examples/sipserver.toml that always agree with the code.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import tomllib
from hypothesis import given
from hypothesis import strategies as st

from sipserver.config import (
    Config,
    ConfigError,
    ListenSpec,
    apply_overrides,
    config_from_dict,
    default_config,
    load_config,
    parse_host_port,
    parse_listen,
    render_example,
    render_reference,
)
from sipserver.outbound.flow import Transport

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sipserver.toml"
REFERENCE = ROOT / "docs" / "config.md"

SECTIONS = [
    "server",
    "tls",
    "registrar",
    "proxy",
    "transaction",
    "limits",
    "auth",
    "rate_limit",
    "store",
    "outbound",
    "mgmt",
]


def section_keys(section: str) -> list[str]:
    return [f.name for f in attrs.fields(type(getattr(default_config(), section)))]


def config_error(d: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config_from_dict(d)
    return info.value


# ---------------------------------------------------------------------------------------------
# Defaults


def test_defaults_match_the_documented_values() -> None:
    cfg = default_config()
    assert [str(s) for s in cfg.server.listen] == [
        "udp:0.0.0.0:5060",
        "tcp:0.0.0.0:5060",
        "ws:0.0.0.0:5066",
    ]
    assert cfg.server.domains == ()
    assert cfg.server.advertise == ""
    assert cfg.server.data_dir == "./sipserver-data"
    assert (cfg.server.log_level, cfg.server.log_format) == ("info", "text")
    assert cfg.server.server_header == "sipserver"
    assert (cfg.tls.cert, cfg.tls.key, cfg.tls.ca, cfg.tls.min_version) == ("", "", "", "1.2")
    reg = cfg.registrar
    assert (reg.min_expires, reg.default_expires, reg.max_expires) == (60, 3600, 7200)
    assert reg.flow_timer == 120
    assert (reg.outbound_without_first_hop, reg.gruu, reg.require_instance) == (
        False,
        True,
        False,
    )
    px = cfg.proxy
    assert (px.record_route, px.timer_c, px.relay_domains) == (True, 180.0, ())
    assert (px.timeout_removes_binding, px.keepalive_grace) == (False, 20.0)
    assert (cfg.transaction.t1, cfg.transaction.t2, cfg.transaction.t4) == (0.5, 4.0, 5.0)
    lim = cfg.limits
    assert (lim.max_message_size, lim.max_connections, lim.max_connections_per_ip) == (
        65535,
        20000,
        200,
    )
    assert (lim.partial_message_timeout, lim.idle_flow_timeout) == (10.0, 300.0)
    assert (lim.max_headers, lim.max_vias, lim.udp_warn_size) == (256, 32, 1300)
    auth = cfg.auth
    assert (auth.enabled, auth.realm, auth.credentials_file) == ("auto", "", "")
    assert (auth.nonce_lifetime, auth.trust_registered_flows) == (300.0, True)
    assert (auth.max_failures, auth.failure_window, auth.ban_time, auth.secret) == (
        10,
        60.0,
        600.0,
        "",
    )
    rl = cfg.rate_limit
    assert (rl.enabled, rl.requests_per_second, rl.burst, rl.action) == (
        True,
        200.0,
        400.0,
        "reject",
    )
    assert (cfg.store.backend, cfg.store.path) == ("sqlite", "")
    assert (cfg.outbound.secret, cfg.outbound.previous_secrets) == ("", ())
    assert (cfg.mgmt.listen, cfg.mgmt.token) == ("", "")
    assert cfg.users == {}


def test_empty_file_gives_the_defaults() -> None:
    assert config_from_dict({}) == default_config()
    assert config_from_dict({s: {} for s in SECTIONS}) == default_config()


def test_derived_paths_follow_data_dir() -> None:
    cfg = config_from_dict({"server": {"data_dir": "/var/lib/sip"}})
    assert cfg.store_path == Path("/var/lib/sip/location.sqlite")
    assert cfg.flow_token_key_path == Path("/var/lib/sip/flow-token.key")
    explicit = config_from_dict({"server": {"data_dir": "/d"}, "store": {"path": "/x/db"}})
    assert explicit.store_path == Path("/x/db")


def test_ints_are_accepted_for_float_keys() -> None:
    cfg = config_from_dict({"transaction": {"t1": 1, "t2": 8}, "proxy": {"timer_c": 200}})
    assert cfg.transaction.t1 == 1.0 and isinstance(cfg.transaction.t1, float)
    assert cfg.proxy.timer_c == 200.0


def test_domains_are_lower_cased_rfc3261_19_1_4() -> None:
    cfg = config_from_dict(
        {"server": {"domains": ["Example.COM", "[::1]"]}, "proxy": {"relay_domains": ["B.Org"]}}
    )
    assert cfg.server.domains == ("example.com", "::1")
    assert cfg.proxy.relay_domains == ("b.org",)


def test_flow_timer_accepts_30_ob_ka_03() -> None:
    """OB-KA-03: the Flow-Timer value is configurable; 30 s is the lowest we accept."""
    assert config_from_dict({"registrar": {"flow_timer": 30}}).registrar.flow_timer == 30


@pytest.mark.parametrize(
    ("enabled", "users", "creds", "expected"),
    [
        ("auto", {}, "", False),
        ("auto", {"alice": {"password": "pw"}}, "", True),
        ("auto", {}, "creds.toml", True),
        (False, {"alice": {"password": "pw"}}, "", False),
        (True, {}, "", True),
    ],
)
def test_auth_auto_turns_on_with_users_or_credentials(
    enabled: object, users: dict[str, Any], creds: str, expected: bool
) -> None:
    cfg = config_from_dict(
        {"auth": {"enabled": enabled, "credentials_file": creds}, "users": users}
    )
    assert cfg.auth_enabled is expected


def test_mgmt_listen_is_parsed_and_normalised() -> None:
    assert default_config().mgmt.address is None
    cfg = config_from_dict({"mgmt": {"listen": "[::1]:8080"}})
    assert cfg.mgmt.address == ("::1", 8080)
    assert cfg.mgmt.listen == "[::1]:8080"
    assert config_from_dict({"mgmt": {"listen": "127.0.0.1:0"}}).mgmt.address == ("127.0.0.1", 0)


# ---------------------------------------------------------------------------------------------
# Validation: every bad value is reported with its full key path


BAD_VALUES: list[tuple[str, object, str]] = [
    ("server.listen", "udp:0.0.0.0:5060", "must be a list"),
    ("server.listen", [], "at least one"),
    ("server.listen", ["bogus"], "bad listen spec"),
    ("server.listen", ["udp:0.0.0.0:5060", 5], "must be a string"),
    ("server.listen", ["tcp:1.2.3.4:5060", "tcp:1.2.3.4:5060"], "duplicate"),
    ("server.domains", "example.com", "must be a list"),
    ("server.domains", ["exa mple.com"], "domain name"),
    ("server.domains", [""], "domain name"),
    ("server.domains", ["a.org", "A.org"], "duplicate"),
    ("server.advertise", "not a host", "host name"),
    ("server.advertise", 5, "must be a string"),
    ("server.data_dir", "", "must not be empty"),
    ("server.log_level", "verbose", "one of"),
    ("server.log_level", "INFO", "one of"),
    ("server.log_format", "xml", "one of"),
    ("server.server_header", "a\r\nX-Evil: 1", "control characters"),
    ("tls.cert", 1, "must be a string"),
    ("tls.min_version", 1.2, "one of"),
    ("tls.min_version", "1.1", "one of"),
    ("registrar.min_expires", "abc", "must be an integer >= 1"),
    ("registrar.min_expires", 0, "must be an integer >= 1"),
    ("registrar.min_expires", 60.0, "integer"),
    ("registrar.min_expires", True, "integer"),
    ("registrar.max_expires", -1, "integer"),
    ("registrar.default_expires", "3600", "integer"),
    ("registrar.flow_timer", 29, "integer >= 30"),
    ("registrar.outbound_without_first_hop", "yes", "true or false"),
    ("registrar.gruu", 1, "true or false"),
    ("registrar.require_instance", "false", "true or false"),
    ("proxy.record_route", 0, "true or false"),
    ("proxy.timer_c", 0.5, ">= 1"),
    ("proxy.timer_c", "180", "number"),
    ("proxy.timer_c", float("inf"), "number"),
    ("proxy.timer_c", float("nan"), "number"),
    ("proxy.relay_domains", ["bad_domain!"], "domain name"),
    ("proxy.timeout_removes_binding", None, "true or false"),
    ("proxy.keepalive_grace", -1, ">= 0"),
    ("transaction.t1", 0, "> 0"),
    ("transaction.t2", -4.0, "> 0"),
    ("transaction.t4", False, "number"),
    ("limits.max_message_size", 1499, ">= 1500"),
    ("limits.max_connections", 0, ">= 1"),
    ("limits.max_connections_per_ip", 0, ">= 1"),
    ("limits.partial_message_timeout", 0, "> 0"),
    ("limits.idle_flow_timeout", -1.0, "> 0"),
    ("limits.max_headers", 2, "integer"),
    ("limits.max_vias", 0, ">= 1"),
    ("limits.udp_warn_size", "big", "integer"),
    ("auth.enabled", "yes", '"auto"'),
    ("auth.enabled", 1, '"auto"'),
    ("auth.realm", 3, "must be a string"),
    ("auth.credentials_file", ["x"], "must be a string"),
    ("auth.nonce_lifetime", 0, "> 0"),
    ("auth.trust_registered_flows", "true", "true or false"),
    ("auth.max_failures", -1, ">= 0"),
    ("auth.failure_window", 0, "> 0"),
    ("auth.ban_time", -5, ">= 0"),
    ("auth.secret", "short", "16 bytes"),
    ("rate_limit.enabled", "on", "true or false"),
    ("rate_limit.requests_per_second", 0, "> 0"),
    ("rate_limit.burst", 0.5, ">= 1"),
    ("rate_limit.action", "block", "one of"),
    ("store.backend", "mongodb", "one of"),
    ("store.redis_url", "http://127.0.0.1:6379", "must start with redis://, rediss:// or unix://, not http://"),
    ("store.redis_url", "127.0.0.1:6379", "must start with redis://"),
    ("store.redis_url", "redis://127.0.0.1:6379/zero", "database must be a number"),
    ("store.redis_url", "redis://:6379/0", "needs a host"),
    ("store.redis_url", "redis://127.0.0.1:70000/0", "not a valid URL"),
    ("store.redis_url", "unix://", "socket path"),
    ("store.redis_key_prefix", "sip server", "letters, digits"),
    ("store.redis_timeout", 0, "> 0"),
    ("store.redis_retry_after", 0, "integer 1..3600"),
    ("store.path", 0, "must be a string"),
    ("outbound.secret", "tooshort", "16 bytes"),
    ("outbound.previous_secrets", "x" * 20, "must be a list"),
    ("outbound.previous_secrets", [""], "16 bytes"),
    ("outbound.previous_secrets", ["k" * 16, "k" * 16], "duplicate"),
    ("mgmt.listen", "127.0.0.1", "HOST:PORT"),
    ("mgmt.listen", "127.0.0.1:99999", "HOST:PORT"),
    ("mgmt.listen", "::1:8080", "brackets"),
    ("mgmt.token", "a\nb", "control characters"),
]


@pytest.mark.parametrize(("path", "value", "fragment"), BAD_VALUES)
def test_bad_value_error_names_the_key(path: str, value: object, fragment: str) -> None:
    section, key = path.split(".")
    err = config_error({section: {key: value}})
    assert err.key is not None and err.key.startswith(path)
    assert str(err).startswith(path)
    assert fragment in str(err)
    assert err.source == "<dict>"


def test_error_quotes_the_value_it_got() -> None:
    err = config_error({"registrar": {"min_expires": "abc"}})
    assert str(err) == 'registrar.min_expires: must be an integer >= 1, got "abc"'


def test_list_item_errors_name_the_index() -> None:
    err = config_error({"server": {"domains": ["ok.org", "not ok"]}})
    assert err.key == "server.domains[1]"
    err = config_error({"server": {"listen": ["udp:0.0.0.0:5060", "tcp:1.2.3.4"]}})
    assert err.key == "server.listen[1]"
    assert '"tcp:1.2.3.4"' in str(err)


@pytest.mark.parametrize("section", SECTIONS)
def test_unknown_key_in_every_section(section: str) -> None:
    err = config_error({section: {"no_such_key": 1}})
    assert str(err) == f'unknown key "{section}.no_such_key"'
    assert err.key == f"{section}.no_such_key"


def test_unknown_key_typo_is_named() -> None:
    assert str(config_error({"server": {"listn": []}})) == 'unknown key "server.listn"'


def test_unknown_section() -> None:
    err = config_error({"servr": {"listen": []}})
    assert str(err) == 'unknown key "servr"'


@pytest.mark.parametrize("section", [*SECTIONS, "users"])
def test_section_must_be_a_table(section: str) -> None:
    err = config_error({section: 5})
    assert err.key == section and "table" in str(err)


@pytest.mark.parametrize(
    ("registrar", "key"),
    [
        ({"min_expires": 100, "max_expires": 50, "default_expires": 70}, "min_expires"),
        ({"default_expires": 30}, "default_expires"),
        ({"default_expires": 7201}, "default_expires"),
        ({"max_expires": 1000}, "default_expires"),
    ],
)
def test_expires_must_be_ordered(registrar: dict[str, int], key: str) -> None:
    """REG3261-06/07: min <= default <= max, or expiry clamping would contradict itself."""
    err = config_error({"registrar": registrar})
    assert err.key == f"registrar.{key}"
    assert str(err).startswith(f"registrar.{key}:")


def test_expires_may_be_equal() -> None:
    cfg = config_from_dict(
        {"registrar": {"min_expires": 600, "default_expires": 600, "max_expires": 600}}
    )
    assert cfg.registrar.default_expires == 600


def test_t2_below_t1_is_rejected() -> None:
    err = config_error({"transaction": {"t1": 2.0, "t2": 1.0}})
    assert err.key == "transaction.t2"


@pytest.mark.parametrize("spec", ["tls:0.0.0.0:5061", "wss:[::]:7443/ws"])
def test_tls_listener_needs_cert_and_key(spec: str) -> None:
    err = config_error({"server": {"listen": [spec]}})
    assert err.key == "tls.cert"
    assert str(err).startswith("tls.cert:") and spec.split("/")[0] in str(err)
    err = config_error({"server": {"listen": [spec]}, "tls": {"cert": "c.pem"}})
    assert err.key == "tls.key"
    ok = config_from_dict({"server": {"listen": [spec]}, "tls": {"cert": "c.pem", "key": "k.pem"}})
    assert ok.server.listen[0].needs_tls


def test_tls_key_without_cert_is_rejected() -> None:
    assert config_error({"tls": {"key": "k.pem"}}).key == "tls.cert"


def test_stream_listeners_cannot_share_a_port() -> None:
    err = config_error({"server": {"listen": ["tcp:0.0.0.0:5060", "ws:0.0.0.0:5060"]}})
    assert err.key == "server.listen[1]" and "same TCP address" in str(err)


def test_udp_and_tcp_may_share_a_port_and_port_zero_may_repeat() -> None:
    cfg = config_from_dict(
        {"server": {"listen": ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060", "ws:127.0.0.1:0"]}}
    )
    assert len(cfg.server.listen) == 3
    cfg = config_from_dict({"server": {"listen": ["tcp:127.0.0.1:0", "ws:127.0.0.1:0"]}})
    assert [s.port for s in cfg.server.listen] == [0, 0]


def test_config_is_immutable() -> None:
    cfg = default_config()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.registrar.min_expires = 1  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# [users.NAME]


def test_users_tables() -> None:
    md5 = "A" * 32
    sha = "b" * 64
    cfg = config_from_dict(
        {
            "users": {
                "alice": {"password": "secret"},
                "bob": {"ha1_md5": md5},
                "carol": {"ha1_sha256": sha, "ha1_md5": "c" * 32},
            }
        }
    )
    assert set(cfg.users) == {"alice", "bob", "carol"}
    assert cfg.users["alice"].password == "secret"
    assert cfg.users["bob"].ha1_md5 == md5.lower() and cfg.users["bob"].password == ""
    assert cfg.users["carol"].ha1_sha256 == sha


def test_user_without_any_secret_is_rejected() -> None:
    err = config_error({"users": {"dave": {}}})
    assert err.key is not None and err.key.startswith("users.dave")
    assert str(err).startswith("users.dave:")


def test_unknown_user_key_names_user_and_key() -> None:
    err = config_error({"users": {"dave": {"password": "x", "pasword": "y"}}})
    assert str(err) == 'unknown key "users.dave.pasword"'


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"ha1_md5": "abc"}, "users.eve.ha1_md5"),
        ({"ha1_md5": "g" * 32}, "users.eve.ha1_md5"),
        ({"ha1_sha256": "a" * 32}, "users.eve.ha1_sha256"),
        ({"password": 1234}, "users.eve.password"),
    ],
)
def test_bad_user_values(table: dict[str, object], key: str) -> None:
    assert config_error({"users": {"eve": table}}).key == key


@pytest.mark.parametrize("name", ["", "has space", 'q"uote', "co:lon"])
def test_bad_user_names(name: str) -> None:
    err = config_error({"users": {name: {"password": "x"}}})
    assert err.key == f"users.{name}"


def test_user_must_be_a_table() -> None:
    assert config_error({"users": {"frank": "pw"}}).key == "users.frank"


# ---------------------------------------------------------------------------------------------
# Listen specs


@pytest.mark.parametrize(
    ("spec", "transport", "host", "port", "path"),
    [
        ("udp:0.0.0.0:5060", "udp", "0.0.0.0", 5060, "/"),
        ("tcp:127.0.0.1:0", "tcp", "127.0.0.1", 0, "/"),
        ("tls:sip.Example.com:5061", "tls", "sip.example.com", 5061, "/"),
        ("ws:0.0.0.0:5066", "ws", "0.0.0.0", 5066, "/"),
        ("ws:0.0.0.0:80/sip", "ws", "0.0.0.0", 80, "/sip"),
        ("wss:[::]:443/a/b-c_d.e", "wss", "::", 443, "/a/b-c_d.e"),
        ("tcp:[::1]:5060", "tcp", "::1", 5060, "/"),
        ("udp:[2001:DB8::1]:65535", "udp", "2001:db8::1", 65535, "/"),
        ("TCP:localhost:5060", "tcp", "localhost", 5060, "/"),
    ],
)
def test_parse_listen(spec: str, transport: str, host: str, port: int, path: str) -> None:
    parsed = parse_listen(spec)
    assert (parsed.transport, parsed.host, parsed.port, parsed.path) == (
        transport,
        host,
        port,
        path,
    )
    assert parse_listen(str(parsed)) == parsed


def test_listen_spec_renders_back() -> None:
    assert str(parse_listen("tcp:[::1]:5060")) == "tcp:[::1]:5060"
    assert str(parse_listen("wss:[::1]:443/sip")) == "wss:[::1]:443/sip"
    assert str(parse_listen("ws:1.2.3.4:80/")) == "ws:1.2.3.4:80"


def test_listen_spec_transport_maps_to_flow_transport() -> None:
    """WS-04: ws/wss listeners produce WS/WSS flows."""
    assert parse_listen("wss:[::1]:443").flow_transport is Transport.WSS
    assert parse_listen("udp:1.2.3.4:5060").flow_transport is Transport.UDP
    assert parse_listen("udp:0.0.0.0:5060").is_wildcard
    assert not parse_listen("udp:10.0.0.1:5060").is_wildcard


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "TRANSPORT:HOST:PORT"),
        ("udp", "TRANSPORT:HOST:PORT"),
        ("sctp:0.0.0.0:5060", "unknown transport"),
        ("udp:0.0.0.0", "PORT"),
        ("udp:0.0.0.0:", "missing port"),
        ("udp::5060", "empty host"),
        ("udp:0.0.0.0:65536", "out of range"),
        ("udp:0.0.0.0:-1", "missing port"),
        ("udp:0.0.0.0:50x", "unexpected"),
        ("tcp:::1:5060", "brackets"),
        ("tcp:[::1:5060", "']'"),
        ("tcp:[::1]5060", ":PORT"),
        ("tcp:[1.2.3.4]:5060", "IPv6"),
        ("tcp:[fe80::zz]:5060", "IPv6"),
        ("tcp:300.1.1.1:5060", "IPv4"),
        ("tcp:bad_host:5060", "host name"),
        ("tcp:0.0.0.0:5060/sip", "only allowed for ws"),
        ("udp:0.0.0.0:5060/sip", "only allowed for ws"),
        ("ws:0.0.0.0:80/a b", "path"),
        ("ws:0.0.0.0:80/\u00e9", "path"),
    ],
)
def test_bad_listen_specs(spec: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_listen(spec)
    message = str(info.value)
    assert message.startswith(f'bad listen spec "{spec}"')
    assert fragment in message


def test_listen_spec_must_be_string() -> None:
    with pytest.raises(ConfigError):
        parse_listen(5060)  # type: ignore[arg-type]


_hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.from_regex(r"[a-z][a-z0-9]{0,10}(\.[a-z][a-z0-9]{0,10}){0,3}", fullmatch=True),
)


@given(
    transport=st.sampled_from(["udp", "tcp", "tls", "ws", "wss"]),
    host=_hosts,
    port=st.integers(0, 65535),
    path=st.from_regex(r"/[!-~]{0,20}", fullmatch=True),
)
def test_listen_spec_round_trip(transport: str, host: str, port: int, path: str) -> None:
    if transport not in ("ws", "wss"):
        path = "/"
    spec = ListenSpec(transport, host, port, path)  # type: ignore[arg-type]
    assert parse_listen(str(spec)) == spec


@given(st.text(max_size=40))
def test_parse_listen_raises_only_config_error(text: str) -> None:
    try:
        spec = parse_listen(text)
    except ConfigError:
        return
    assert parse_listen(str(spec)) == spec


@given(st.text(max_size=30))
def test_parse_host_port_raises_only_config_error(text: str) -> None:
    try:
        host, port = parse_host_port(text)
    except ConfigError:
        return
    assert 0 <= port <= 65535 and host


_toml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=12),
)
_toml_values = st.recursive(
    _toml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)


@given(
    st.dictionaries(
        st.sampled_from([*SECTIONS, "users", "other"]),
        st.dictionaries(
            st.sampled_from(["listen", "min_expires", "t1", "enabled", "secret", "x", "alice"]),
            _toml_values,
            max_size=3,
        )
        | _toml_values,
        max_size=3,
    )
)
def test_junk_raises_only_config_error(d: dict[str, Any]) -> None:
    try:
        cfg = config_from_dict(d)
    except ConfigError as exc:
        assert exc.source == "<dict>"
        return
    assert isinstance(cfg, Config)


# ---------------------------------------------------------------------------------------------
# Command-line overrides


def test_overrides_replace_lists_and_set_values() -> None:
    base = config_from_dict(
        {
            "server": {"listen": ["udp:0.0.0.0:5070", "tcp:0.0.0.0:5070"], "domains": ["a.org"]},
            "registrar": {"min_expires": 120, "default_expires": 600},
        }
    )
    cfg = apply_overrides(
        base,
        listen=["tcp:127.0.0.1:0"],
        domains=["B.org", "c.org"],
        data_dir="/tmp/sip",
        log_level="debug",
        log_format="json",
        mgmt="127.0.0.1:9090",
    )
    assert [str(s) for s in cfg.server.listen] == ["tcp:127.0.0.1:0"]
    assert cfg.server.domains == ("b.org", "c.org")
    assert cfg.server.data_dir == "/tmp/sip"
    assert (cfg.server.log_level, cfg.server.log_format) == ("debug", "json")
    assert cfg.mgmt.address == ("127.0.0.1", 9090)
    # Everything not overridden comes from the file.
    assert cfg.registrar == base.registrar


def test_no_overrides_is_identity() -> None:
    base = config_from_dict({"server": {"domains": ["a.org"]}})
    assert apply_overrides(base) == base


def test_empty_override_list_replaces_domains() -> None:
    base = config_from_dict({"server": {"domains": ["a.org"]}})
    assert apply_overrides(base, domains=[]).server.domains == ()


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"listen": ["udp:nowhere"]}, "server.listen[0]"),
        ({"listen": []}, "server.listen"),
        ({"domains": ["bad domain"]}, "server.domains[0]"),
        ({"data_dir": ""}, "server.data_dir"),
        ({"log_level": "loud"}, "server.log_level"),
        ({"log_format": "yaml"}, "server.log_format"),
        ({"mgmt": "localhost"}, "mgmt.listen"),
        ({"listen": ["tls:0.0.0.0:5061"]}, "tls.cert"),
    ],
)
def test_bad_overrides_name_the_key(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(default_config(), **kwargs)
    assert info.value.key == key
    assert info.value.source == "command line"


# ---------------------------------------------------------------------------------------------
# Files, the example and the reference


def test_load_config_reads_toml(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        '[server]\nlisten = ["tcp:[::1]:5070"]\n[registrar]\nflow_timer = 90\n'
        '[users.alice]\npassword = "pw"\n'
    )
    cfg = load_config(path)
    assert cfg.server.listen == (ListenSpec("tcp", "::1", 5070),)
    assert cfg.registrar.flow_timer == 90
    assert cfg.users["alice"].password == "pw"


def test_load_config_errors_carry_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[registrar]\nmin_expires = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert info.value.describe() == f"{path}: {info.value}"
    assert info.value.key == "registrar.min_expires"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read"),
        (b"[server\n", "invalid TOML"),
        (b"x = \xff\n", "UTF-8"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes | None, fragment: str) -> None:
    path = tmp_path / "c.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert fragment in str(info.value)
    assert info.value.source == str(path)


def test_example_file_loads_as_the_defaults() -> None:
    assert load_config(EXAMPLE) == default_config()


def test_example_file_sets_every_key_in_its_section() -> None:
    parsed = tomllib.loads(EXAMPLE.read_text())
    for section in SECTIONS:
        assert set(parsed[section]) == set(section_keys(section)), section


def test_example_file_shows_a_user_that_uncomments_cleanly() -> None:
    text = EXAMPLE.read_text()
    start = text.index("# [users.")
    block = "\n".join(line[2:] for line in text[start:].splitlines() if line.startswith("# "))
    users = config_from_dict(tomllib.loads(block)).users
    assert len(users) == 1
    for key in ("password", "ha1_md5", "ha1_sha256"):
        assert re.search(rf"^# {key} = ", text, re.M), key


def test_example_file_is_generated_from_the_fields() -> None:
    assert EXAMPLE.read_text() == render_example(), (
        "regenerate with: python -c 'import sipserver.config as c; "
        'open("examples/sipserver.toml", "w").write(c.render_example())\''
    )


def test_reference_doc_is_up_to_date() -> None:
    assert REFERENCE.read_text() == render_reference(), (
        "regenerate with: python -m sipserver.config > docs/config.md"
    )


def test_reference_documents_every_key_with_its_default() -> None:
    reference = render_reference()
    cfg = default_config()
    for section in SECTIONS:
        for key in section_keys(section):
            assert f"### `{section}.{key}`" in reference
    for key in ("password", "ha1_md5", "ha1_sha256"):
        assert f"### `users.NAME.{key}`" in reference
    assert "- Default: `120`" in reference  # registrar.flow_timer
    assert f"- Default: `{cfg.limits.max_message_size}`" in reference


def test_config_module_does_not_import_trio() -> None:
    code = "import sys, sipserver.config; assert 'trio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize(
    "d",
    [
        {"auth": {"secret": "tiny-secret"}},
        {"outbound": {"secret": "tiny-secret"}},
        {"outbound": {"previous_secrets": ["tiny-secret-but-long", "tiny-secret-but-long"]}},
        {"outbound": {"previous_secrets": ["tiny-secret"]}},
        {"mgmt": {"token": "tiny-secret\n"}},
        {"users": {"alice": {"ha1_md5": "tiny-secret"}}},
        {"users": {"alice": {"ha1_sha256": "tiny-secret"}}},
    ],
)
def test_secrets_are_not_echoed_in_errors(d: dict[str, Any]) -> None:
    assert "tiny-secret" not in str(config_error(d))


def test_secrets_are_not_in_repr() -> None:
    cfg = config_from_dict(
        {
            "auth": {"secret": "S" * 20 + "auth"},
            "outbound": {"secret": "S" * 20 + "ob", "previous_secrets": ["S" * 20 + "old"]},
            "mgmt": {"token": "S" * 20 + "tok"},
            "users": {"alice": {"password": "S" * 20 + "pw", "ha1_md5": "f" * 32}},
        }
    )
    text = repr(cfg)
    assert "S" * 20 not in text and "f" * 32 not in text
    assert cfg.outbound.secret.endswith("ob")  # still stored, just not shown
