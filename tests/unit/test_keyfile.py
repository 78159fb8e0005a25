"""Flow-token secret file and configured secrets (RFC 5626 §5.2 key; OB-EP-06)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sipserver.outbound.flow import Flow, Transport
from sipserver.outbound.flowtoken import FlowTokenCodec
from sipserver.outbound.keyfile import KeyFileError, load_or_create_key, parse_secret

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def write(path: Path, content: bytes | str, mode: int = 0o600) -> None:
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(data)
    path.chmod(mode)


# --- creating and re-reading ----------------------------------------------------------------


@posix_only
def test_missing_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "sub" / "flowtoken.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == key.hex()
    # No temporary files are left next to it.
    assert [p.name for p in path.parent.iterdir()] == ["flowtoken.key"]


@posix_only
def test_created_private_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "flowtoken.key"
        load_or_create_key(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_reread_returns_the_same_key(tmp_path: Path) -> None:
    """Tokens in stored Paths keep verifying after a restart (OB-EP-06 with a persistent key)."""
    path = tmp_path / "flowtoken.key"
    first = load_or_create_key(path)
    second = load_or_create_key(path)
    assert first == second
    flow = Flow(Transport.TLS, ("192.0.2.1", 5061), ("198.51.100.3", 40000), 9)
    assert FlowTokenCodec(second).decode(FlowTokenCodec(first).encode(flow)) == flow


def test_each_new_file_gets_a_new_random_key(tmp_path: Path) -> None:
    assert load_or_create_key(tmp_path / "a.key") != load_or_create_key(tmp_path / "b.key")


def test_existing_hex_file_is_used(tmp_path: Path) -> None:
    path = tmp_path / "flowtoken.key"
    key = bytes(range(32))
    write(path, "\n  " + key.hex().upper() + "  \n\n")
    assert load_or_create_key(path) == key


def test_creation_race_keeps_the_other_process_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers starting together must end up with one key, not overwrite each other."""
    path = tmp_path / "flowtoken.key"
    theirs = bytes(range(100, 132))
    real_link = os.link

    def racing_link(src: str | Path, dst: str | Path) -> None:
        write(path, theirs.hex() + "\n")  # the other process wins just before us
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    assert load_or_create_key(path) == theirs
    assert [p.name for p in tmp_path.iterdir()] == ["flowtoken.key"]


def test_file_system_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: str | Path, dst: str | Path) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    path = tmp_path / "flowtoken.key"
    key = load_or_create_key(path)
    monkeypatch.undo()
    assert load_or_create_key(path) == key
    assert [p.name for p in tmp_path.iterdir()] == ["flowtoken.key"]


# --- refusals -------------------------------------------------------------------------------


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666, 0o601])
def test_group_or_world_accessible_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "flowtoken.key"
    key = bytes(range(32))
    write(path, key.hex(), mode)
    with pytest.raises(KeyFileError) as info:
        load_or_create_key(path)
    message = str(info.value)
    assert str(path) in message
    assert f"{mode:o}" in message
    assert key.hex() not in message


@posix_only
def test_owner_only_read_only_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "flowtoken.key"
    write(path, bytes(range(32)).hex(), 0o400)
    assert load_or_create_key(path) == bytes(range(32))


@pytest.mark.parametrize(
    "content",
    [
        "",
        "\n",
        "not a key",
        "00" * 31,  # too short
        "00" * 33,  # too long
        "zz" * 32,  # right length, not hex
        " ".join(["0011"] * 16)[:64],  # 64 characters, but with spaces inside
        b"\xff\xfe" + b"00" * 31,  # not ASCII
        "ab" * 5000,  # far too large
    ],
)
def test_malformed_file_is_refused(tmp_path: Path, content: bytes | str) -> None:
    path = tmp_path / "flowtoken.key"
    write(path, content)
    with pytest.raises(KeyFileError) as info:
        load_or_create_key(path)
    assert str(path) in str(info.value)
    # The malformed file is left for the operator to inspect, never overwritten.
    data = content.encode() if isinstance(content, str) else content
    assert path.read_bytes() == data


def test_directory_in_place_of_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flowtoken.key"
    path.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="regular file"):
        load_or_create_key(path)


@posix_only
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores modes")
def test_unwritable_directory_is_a_key_file_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(KeyFileError, match="cannot create"):
            load_or_create_key(locked / "flowtoken.key")
    finally:
        locked.chmod(0o700)


def test_parent_that_is_a_file_is_a_key_file_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    with pytest.raises(KeyFileError, match="Not a directory") as info:
        load_or_create_key(blocker / "flowtoken.key")
    assert str(blocker) in str(info.value)


# --- secrets from configuration -------------------------------------------------------------


def test_parse_secret_hex() -> None:
    key = bytes(range(16))
    assert parse_secret(key.hex()) == key
    assert parse_secret("  " + bytes(range(32)).hex().upper() + "\n") == bytes(range(32))


def test_parse_secret_same_text_as_key_file(tmp_path: Path) -> None:
    """Copying a key file's content into the config names the same key."""
    path = tmp_path / "flowtoken.key"
    key = load_or_create_key(path)
    assert parse_secret(path.read_text()) == key


def test_parse_secret_passphrase() -> None:
    assert parse_secret("correct horse battery") == b"correct horse battery"
    assert parse_secret("sixteen chars!!!") == b"sixteen chars!!!"
    assert parse_secret("ééééééééééééééééé") == "ééééééééééééééééé".encode()
    # Hex-looking but odd length: used as a passphrase, not silently truncated.
    odd = "a" * 33
    assert parse_secret(odd) == odd.encode()
    # Spaced hex is not hex (bytes.fromhex would accept it and yield a shorter key).
    spaced = " ".join(["00112233"] * 5)
    assert parse_secret(spaced) == spaced.encode()


@pytest.mark.parametrize("text", ["", "   ", "qwerty", "fifteen chars!!", "  fifteen chars!!  "])
def test_parse_secret_too_short(text: str) -> None:
    with pytest.raises(KeyFileError) as info:
        parse_secret(text)
    message = str(info.value)
    assert "16" in message and "32" in message
    if text.strip():
        assert text.strip() not in message


def test_parse_secret_output_is_a_usable_codec_key() -> None:
    for text in ("0123456789abcdef0123456789abcdef", "a passphrase of enough length"):
        FlowTokenCodec(parse_secret(text))
