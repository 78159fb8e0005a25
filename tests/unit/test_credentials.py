"""Credential store and credentials file (RFC 7616 §3.4.2 HA1 storage): REG3261-03."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
import tomllib

from sipserver.auth.credentials import CredentialsError, CredentialStore, passwd_entry, write_user
from sipserver.auth.digest import DigestAuthenticator, parse_credentials

REALM = "example.org"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- from_users


def test_password_user_gets_both_ha1s() -> None:
    store = CredentialStore.from_users(REALM, {"alice": {"password": "wonderland"}})
    assert store.lookup("alice", "MD5") == md5(f"alice:{REALM}:wonderland")
    assert store.lookup("alice", "SHA-256") == sha256(f"alice:{REALM}:wonderland")
    assert store.lookup("alice", "sha-256") == sha256(f"alice:{REALM}:wonderland")


def test_ha1_user_and_missing_algorithm() -> None:
    store = CredentialStore.from_users(
        REALM, {"bob": {"ha1_md5": md5(f"bob:{REALM}:pw").upper()}}
    )
    assert store.lookup("bob", "MD5") == md5(f"bob:{REALM}:pw")  # normalised to lower case
    assert store.lookup("bob", "SHA-256") is None
    assert store.lookup("bob", "SHA-512-256") is None


def test_unknown_user_lookup_and_listing() -> None:
    store = CredentialStore.from_users(
        REALM, {"zed": {"password": "a"}, "amy": {"ha1_sha256": sha256("x")}}
    )
    assert store.lookup("nobody", "MD5") is None
    assert store.has_user("amy") and not store.has_user("nobody")
    assert store.users() == ["amy", "zed"]
    assert store.realm == REALM


@pytest.mark.parametrize(
    "table, words",
    [
        ({"pasword": "x"}, ["carol", "pasword"]),
        ({}, ["carol", "password"]),
        ({"password": 1234}, ["carol", "password"]),
        ({"password": ""}, ["carol", "password"]),
        ({"ha1_md5": "abc"}, ["carol", "ha1_md5"]),
        ({"ha1_sha256": md5("x")}, ["carol", "ha1_sha256"]),
        ({"ha1_md5": "z" * 32}, ["carol", "ha1_md5"]),
        ({"password": "x", "ha1_md5": md5("x")}, ["carol", "password"]),
    ],
)
def test_bad_user_table_names_user_and_key(table: dict[str, object], words: list[str]) -> None:
    with pytest.raises(ValueError) as exc:
        CredentialStore.from_users(REALM, {"carol": table})  # type: ignore[dict-item]
    assert isinstance(exc.value, CredentialsError)
    for word in words:
        assert word in str(exc.value)


def test_secrets_not_in_errors_or_repr() -> None:
    store = CredentialStore.from_users(REALM, {"alice": {"password": "hunter2-secret"}})
    assert "hunter2" not in repr(store)
    assert store.lookup("alice", "MD5") not in repr(store)  # type: ignore[operator]
    with pytest.raises(CredentialsError) as exc:
        CredentialStore.from_users(REALM, {"x": {"password": "hunter2-secret", "bad": "v4lue"}})
    assert "hunter2" not in str(exc.value) and "v4lue" not in str(exc.value)


def test_store_drives_authenticator() -> None:
    """The store's lookup plugs into DigestAuthenticator.verify as ha1_lookup."""
    store = CredentialStore.from_users(REALM, {"alice": {"password": "wonderland"}})
    auth = DigestAuthenticator(realm=REALM, secret=b"k" * 32)
    nonce = auth.challenge(100.0)[0].split('nonce="')[1].split('"')[0]
    a1 = sha256(f"alice:{REALM}:wonderland")
    a2 = sha256("REGISTER:sip:example.org")
    resp = sha256(f"{a1}:{nonce}:00000001:cn:auth:{a2}")
    creds = parse_credentials(
        f'Digest username="alice", realm="{REALM}", nonce="{nonce}", uri="sip:example.org", '
        f'response="{resp}", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="cn"'
    )
    assert creds is not None
    assert auth.verify(creds, "REGISTER", store.lookup, 101.0).ok


# --------------------------------------------------------------------------- load_file


def test_load_file(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text(
        f'realm = "{REALM}"\n'
        "[users.alice]\n"
        'password = "wonderland"\n'
        '[users."bob@lab"]\n'
        f'ha1_md5 = "{md5("bob@lab:" + REALM + ":pw")}"\n'
    )
    store = CredentialStore.load_file(path, REALM)
    assert store.users() == ["alice", "bob@lab"]
    assert store.lookup("alice", "SHA-256") == sha256(f"alice:{REALM}:wonderland")
    assert store.lookup("bob@lab", "MD5") == md5(f"bob@lab:{REALM}:pw")
    assert store.lookup("bob@lab", "SHA-256") is None


def test_load_file_without_realm_or_users(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("# nobody yet\n")
    assert CredentialStore.load_file(str(path), REALM).users() == []


@pytest.mark.parametrize(
    "content, words",
    [
        ("[users.alice\n", ["invalid TOML"]),
        ('[users.alice]\npasswd = "secretvalue"\n', ["alice", "passwd"]),
        ("[users.alice]\n", ["alice", "password"]),
        ('users = "alice"\n', ["users"]),
        ('realm = "other.org"\n', ["other.org", REALM]),
        ('[user.alice]\npassword = "x"\n', ["user"]),
        ('[users]\nalice = "secretvalue"\n', ["alice"]),
    ],
)
def test_load_file_errors_name_file_and_problem(tmp_path: Path, content: str, words: list[str]) -> None:
    path = tmp_path / "creds.toml"
    path.write_text(content)
    with pytest.raises(CredentialsError) as exc:
        CredentialStore.load_file(path, REALM)
    message = str(exc.value)
    assert str(path) in message
    for word in words:
        assert word in message
    assert "secretvalue" not in message


def test_load_file_missing_and_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="no such file"):
        CredentialStore.load_file(tmp_path / "absent.toml", REALM)
    path = tmp_path / "bin.toml"
    path.write_bytes(b'[users.a]\npassword = "\xff\xfesecret"\n')
    with pytest.raises(CredentialsError, match="UTF-8") as exc:
        CredentialStore.load_file(path, REALM)
    assert "xff" not in str(exc.value)


def test_load_file_directory_is_credentials_error(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError):
        CredentialStore.load_file(tmp_path, REALM)


# --------------------------------------------------------------------------- passwd_entry / write_user


def test_passwd_entry_has_ha1s_not_password() -> None:
    text = passwd_entry("alice", REALM, "wonderland")
    assert "wonderland" not in text
    doc = tomllib.loads(text)
    assert doc == {
        "users": {
            "alice": {
                "ha1_md5": md5(f"alice:{REALM}:wonderland"),
                "ha1_sha256": sha256(f"alice:{REALM}:wonderland"),
            }
        }
    }


@pytest.mark.parametrize("name", ["bob@lab.example", 'we"ird\\name', "tab\there", "dotted.name", "ñ"])
def test_passwd_entry_quotes_odd_usernames(name: str) -> None:
    doc = tomllib.loads(passwd_entry(name, REALM, "pw"))
    assert list(doc["users"]) == [name]
    store = CredentialStore.from_users(REALM, doc["users"])
    assert store.lookup(name, "MD5") == md5(f"{name}:{REALM}:pw")


@pytest.mark.parametrize("args", [("", REALM, "pw"), ("a", REALM, ""), ("a", "", "pw"), ("\ud800", REALM, "pw")])
def test_passwd_entry_refuses_empty_or_invalid(args: tuple[str, str, str]) -> None:
    with pytest.raises(CredentialsError):
        passwd_entry(*args)


def test_write_user_creates_0600_file_without_password(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    write_user(path, "alice", REALM, "wonderland")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "wonderland" not in path.read_text()
    store = CredentialStore.load_file(path, REALM)
    assert store.lookup("alice", "MD5") == md5(f"alice:{REALM}:wonderland")
    assert store.lookup("alice", "SHA-256") == sha256(f"alice:{REALM}:wonderland")
    # The file remembers its realm, so loading it for another realm is caught.
    with pytest.raises(CredentialsError, match="realm"):
        CredentialStore.load_file(path, "other.org")


def test_write_user_adds_and_replaces_keeping_others_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text(
        "# site users\n"
        "[users.alice]\n"
        'password = "old"\n'
        "\n"
        "# bob runs the lab\n"
        "[users.bob]\n"
        'password = "builder"\n'
    )
    os.chmod(path, 0o640)
    write_user(path, "alice", REALM, "new-pass")
    write_user(path, "carol", REALM, "singer")
    text = path.read_text()
    assert "# site users" in text and "# bob runs the lab" in text
    assert "old" not in text and "new-pass" not in text and "singer" not in text
    store = CredentialStore.load_file(path, REALM)
    assert store.users() == ["alice", "bob", "carol"]
    assert store.lookup("alice", "SHA-256") == sha256(f"alice:{REALM}:new-pass")
    assert store.lookup("bob", "MD5") == md5(f"bob:{REALM}:builder")
    assert store.lookup("carol", "MD5") == md5(f"carol:{REALM}:singer")
    assert text.index("[users.alice]") < text.index("[users.bob]")  # replaced in place
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_write_user_never_leaves_file_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text("")
    os.chmod(path, 0o604)
    write_user(path, "alice", REALM, "pw")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # "other" bits dropped, group had none


def test_write_user_rewrites_unusual_layout(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text('[users]\nalice = { password = "pw" }\nbob = { password = "b" }\n')
    write_user(path, "alice", REALM, "pw2")
    store = CredentialStore.load_file(path, REALM)
    assert store.users() == ["alice", "bob"]
    assert store.lookup("alice", "MD5") == md5(f"alice:{REALM}:pw2")
    assert store.lookup("bob", "MD5") == md5(f"bob:{REALM}:b")


def test_write_user_replaces_quoted_header(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    write_user(path, "bob@lab", REALM, "one")
    write_user(path, "bob@lab", REALM, "two")
    assert path.read_text().count("bob@lab") == 1
    assert CredentialStore.load_file(path, REALM).lookup("bob@lab", "MD5") == md5(
        f"bob@lab:{REALM}:two"
    )


def test_write_user_refuses_broken_or_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text("[users.alice\n")
    with pytest.raises(CredentialsError):
        write_user(path, "bob", REALM, "pw")
    assert path.read_text() == "[users.alice\n"
    path.write_text('realm = "other.org"\n')
    with pytest.raises(CredentialsError, match="other.org"):
        write_user(path, "bob", REALM, "pw")


def test_write_user_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    for i in range(3):
        write_user(path, f"u{i}", REALM, "pw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.toml"]


def test_write_user_unwritable_directory_is_credentials_error(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError):
        write_user(tmp_path / "missing-dir" / "users.toml", "alice", REALM, "pw")
