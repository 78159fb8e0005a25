"""sipserver.cli: argument handling, exit codes, error output and logging setup.

The runtime and the credentials writer are replaced by recording fakes, so these tests check what
the command line hands over, not what those modules do with it.
"""

from __future__ import annotations

import getpass
import io
import json
import logging
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import sipserver
from sipserver import cli
from sipserver.config import Config

GOOD = '[server]\nlisten = ["udp:127.0.0.1:5070"]\ndomains = ["example.org"]\n'
BAD = "[registrar]\nmin_expires = 0\n"


pytestmark = pytest.mark.usefixtures("restore_logging")  # tests/unit/conftest.py


@pytest.fixture
def fake_runtime(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """Stands in for sipserver.service; records the Config each run() gets."""
    calls: list[Config] = []
    module = types.ModuleType("sipserver.service")

    def run(cfg: Config) -> int:
        calls.append(cfg)
        return 7

    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sipserver.service", module)
    return calls


@pytest.fixture
def fake_write_user(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Stands in for sipserver.auth.credentials.write_user; records its arguments."""
    calls: list[tuple[Any, ...]] = []
    module = types.ModuleType("sipserver.auth.credentials")

    def write_user(path: Path, username: str, realm: str, password: str) -> None:
        calls.append((path, username, realm, password))

    module.write_user = write_user  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sipserver.auth.credentials", module)
    return calls


def write(tmp_path: Path, text: str, name: str = "sipserver.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------------------------
# check-config


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD)
    assert cli.main(["check-config", path]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: OK\n" and err == ""


def test_check_config_bad_names_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BAD)
    assert cli.main(["check-config", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}: registrar.min_expires: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_check_config_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config"]) == 2
    assert "FILE" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# run


def test_run_bad_config_is_one_line_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_runtime: list[Config]
) -> None:
    path = write(tmp_path, BAD)
    assert cli.main(["run", "-c", path]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"sipserver: config error: {path}: registrar.min_expires:")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert fake_runtime == []


def test_run_bad_config_never_imports_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes any import of the runtime fail loudly.
    monkeypatch.setitem(sys.modules, "sipserver.service", None)
    assert cli.main(["run", "-c", write(tmp_path, "[nope]\n")]) == 2
    assert 'unknown key "nope"' in capsys.readouterr().err


def test_run_bad_flag_value_is_a_config_error(
    capsys: pytest.CaptureFixture[str], fake_runtime: list[Config]
) -> None:
    assert cli.main(["run", "--listen", "udp:0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sipserver: config error: command line: server.listen[0]:")
    assert fake_runtime == []


def test_run_passes_file_plus_overrides_to_runtime(
    tmp_path: Path, fake_runtime: list[Config]
) -> None:
    path = write(tmp_path, GOOD + "[registrar]\nflow_timer = 45\n")
    code = cli.main(
        [
            "run",
            "-c",
            path,
            "--listen",
            "tcp:127.0.0.1:0",
            "--listen",
            "ws:[::1]:0/sip",
            "--domain",
            "Other.net",
            "--data-dir",
            str(tmp_path / "data"),
            "--log-level",
            "WARNING",
            "--log-format",
            "json",
            "--mgmt",
            "127.0.0.1:0",
        ]
    )
    assert code == 7  # the runtime's exit code is the command's
    (cfg,) = fake_runtime
    assert [str(s) for s in cfg.server.listen] == ["tcp:127.0.0.1:0", "ws:[::1]:0/sip"]
    assert cfg.server.domains == ("other.net",)
    assert cfg.server.data_dir == str(tmp_path / "data")
    assert (cfg.server.log_level, cfg.server.log_format) == ("warning", "json")
    assert cfg.mgmt.address == ("127.0.0.1", 0)
    assert cfg.registrar.flow_timer == 45  # untouched file value


def test_run_without_file_uses_defaults(fake_runtime: list[Config]) -> None:
    assert cli.main(["run"]) == 7
    (cfg,) = fake_runtime
    assert cfg == Config()


def test_run_configures_logging(
    capsys: pytest.CaptureFixture[str], fake_runtime: list[Config]
) -> None:
    cli.main(["run", "--log-format", "json", "--log-level", "debug"])
    logging.getLogger("sipserver.test").debug("hello %s", "there")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert (line["level"], line["logger"], line["msg"]) == (
        "DEBUG",
        "sipserver.test",
        "hello there",
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--log-level", "loud"],
        ["run", "--log-format", "xml"],
        ["run", "--bogus"],
        ["run", "-c"],
    ],
)
def test_run_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str], fake_runtime: list[Config]
) -> None:
    assert cli.main(argv) == 2
    assert "usage:" in capsys.readouterr().err
    assert fake_runtime == []


# ---------------------------------------------------------------------------------------------
# passwd


def test_passwd_from_stdin_with_flags(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_write_user: list[tuple[Any, ...]],
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret pass\r\n"))
    creds = tmp_path / "creds.toml"
    argv = ["passwd", "alice", "--credentials-file", str(creds), "--realm", "example.org"]
    assert cli.main([*argv, "--password-stdin"]) == 0
    assert fake_write_user == [(creds, "alice", "example.org", "s3cret pass")]
    assert "s3cret" not in capsys.readouterr().out


def test_passwd_takes_file_and_realm_from_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_write_user: list[tuple[Any, ...]]
) -> None:
    config = write(tmp_path, '[auth]\ncredentials_file = "users.toml"\nrealm = "sip.test"\n')
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert cli.main(["passwd", "bob", "-c", config, "--password-stdin"]) == 0
    assert fake_write_user == [(Path("users.toml"), "bob", "sip.test", "pw")]


def test_passwd_flags_win_over_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_write_user: list[tuple[Any, ...]]
) -> None:
    config = write(tmp_path, '[auth]\ncredentials_file = "users.toml"\nrealm = "sip.test"\n')
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    argv = ["passwd", "bob", "-c", config, "--credentials-file", "o.toml", "--realm", "r"]
    assert cli.main([*argv, "--password-stdin"]) == 0
    assert fake_write_user == [(Path("o.toml"), "bob", "r", "pw")]


def test_passwd_prompts_twice(
    monkeypatch: pytest.MonkeyPatch, fake_write_user: list[tuple[Any, ...]]
) -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return "twice"

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    assert cli.main(["passwd", "carol", "--credentials-file", "c.toml", "--realm", "r"]) == 0
    assert len(prompts) == 2 and "carol" in prompts[0]
    assert fake_write_user == [(Path("c.toml"), "carol", "r", "twice")]


def test_passwd_mismatch_writes_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_write_user: list[tuple[Any, ...]],
) -> None:
    answers = iter(["one", "two"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
    assert cli.main(["passwd", "dave", "--credentials-file", "c.toml", "--realm", "r"]) == 1
    assert "do not match" in capsys.readouterr().err
    assert fake_write_user == []


def test_passwd_empty_password_refused(
    monkeypatch: pytest.MonkeyPatch, fake_write_user: list[tuple[Any, ...]]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    argv = ["passwd", "e", "--credentials-file", "c.toml", "--realm", "r", "--password-stdin"]
    assert cli.main(argv) == 1
    assert fake_write_user == []


def test_passwd_needs_a_credentials_file(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_write_user: list[tuple[Any, ...]],
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert cli.main(["passwd", "f", "--realm", "r", "--password-stdin"]) == 2
    assert "--credentials-file" in capsys.readouterr().err
    assert fake_write_user == []


def test_passwd_needs_a_realm(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_write_user: list[tuple[Any, ...]],
) -> None:
    config = write(tmp_path, '[auth]\ncredentials_file = "users.toml"\n')
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert cli.main(["passwd", "g", "-c", config, "--password-stdin"]) == 2
    assert "--realm" in capsys.readouterr().err
    assert fake_write_user == []


def test_passwd_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_write_user: list[tuple[Any, ...]]
) -> None:
    assert cli.main(["passwd", "h", "-c", write(tmp_path, BAD)]) == 2
    assert capsys.readouterr().err.startswith("sipserver: config error:")


def test_passwd_write_failure_is_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = types.ModuleType("sipserver.auth.credentials")

    def write_user(path: Path, username: str, realm: str, password: str) -> None:
        raise PermissionError(13, "Permission denied")

    module.write_user = write_user  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sipserver.auth.credentials", module)
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    argv = ["passwd", "i", "--credentials-file", "/x.toml", "--realm", "r", "--password-stdin"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "/x.toml" in err and "Permission denied" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# ctl, --version, no command


def test_ctl_needs_a_known_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ctl"]) == 2
    assert "a command is required" in capsys.readouterr().err
    assert cli.main(["ctl", "status", "--json"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("where", ["flag", "env", "flag-after-command"])
def test_ctl_unreachable_server_is_one_clear_line(
    where: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _closed_port()
    if where == "env":
        monkeypatch.setenv("SIPSERVER_MGMT", f"127.0.0.1:{port}")
        argv = ["ctl", "registrations"]
    elif where == "flag":
        argv = ["ctl", "--mgmt", f"127.0.0.1:{port}", "registrations"]
    else:
        argv = ["ctl", "registrations", "--mgmt", f"127.0.0.1:{port}", "--json"]
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"sipserver ctl: cannot reach the management API at http://127.0.0.1:{port}")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_ctl_bad_address_and_config_without_mgmt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["ctl", "--mgmt", "nonsense", "flows"]) == 1
    assert "--mgmt" in capsys.readouterr().err
    assert cli.main(["ctl", "-c", write(tmp_path, GOOD), "flows"]) == 1
    assert "no [mgmt] listen" in capsys.readouterr().err
    assert cli.main(["ctl", "-c", write(tmp_path, BAD, "bad.toml"), "flows"]) == 1
    assert "registrar.min_expires" in capsys.readouterr().err


def test_ctl_table_and_duration_formatting() -> None:
    from sipserver.mgmt.ctl import duration, format_table

    table = format_table(["A", "LONG-HEADER", "C"], [["xyz", None, True], ["", 12, "end"]])
    assert table.splitlines() == [
        "A    LONG-HEADER  C",
        "xyz  -            yes",
        "-    12           end",
    ]
    assert [duration(s) for s in (None, -1, 5, 65, 3600 * 2 + 180, 86400 * 3 + 7200)] == [
        "-", "0s", "5s", "1m05s", "2h03m", "3d02h"
    ]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    version, code = capsys.readouterr().out.strip().split("; ", 1)
    assert version == f"sipserver {sipserver.__version__}"
    # which code runs: the mypyc build of sipserver/native.py or pure Python, and why
    assert code == sipserver.native.status()
    assert code.startswith(("compiled with mypyc: ", "pure Python"))


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "check-config", "passwd", "ctl"):
        assert command in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "command is required" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# setup_logging


TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (\w+) ([\w.]+): (.*)$")


def test_text_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    cli.setup_logging("info", "text")
    log = logging.getLogger("sipserver.x")
    log.debug("hidden")
    log.info("message %d", 1, extra={"flow": "udp/1.2.3.4:5060"})
    (line,) = capsys.readouterr().err.splitlines()
    m = TEXT_LINE.match(line)
    assert m is not None, line
    assert m.groups() == ("INFO", "sipserver.x", "message 1 flow=udp/1.2.3.4:5060")


def test_json_log_lines_carry_extra_fields(capsys: pytest.CaptureFixture[str]) -> None:
    cli.setup_logging("warning", "json")
    log = logging.getLogger("sipserver.y")
    log.info("hidden")
    log.warning("flow %s failed", "f1", extra={"aor": "sip:a@b", "obj": Path("/p")})
    (line,) = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert record["level"] == "WARNING" and record["logger"] == "sipserver.y"
    assert record["msg"] == "flow f1 failed"
    assert record["aor"] == "sip:a@b" and record["obj"] == "/p"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"])


def test_json_log_includes_exceptions(capsys: pytest.CaptureFixture[str]) -> None:
    cli.setup_logging("error", "json")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("sipserver.z").exception("failed")
    (line,) = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert "RuntimeError: boom" in record["exc"]


def test_setup_logging_twice_does_not_duplicate(capsys: pytest.CaptureFixture[str]) -> None:
    cli.setup_logging("info", "json")
    cli.setup_logging("info", "text")
    logging.getLogger("sipserver.w").info("once")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and TEXT_LINE.match(lines[0])


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "text"), ("info", "xml")])
def test_setup_logging_rejects_unknown_values(level: str, fmt: str) -> None:
    with pytest.raises(ValueError):
        cli.setup_logging(level, fmt)
