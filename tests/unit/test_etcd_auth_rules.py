"""The pure rules of etcd RBAC administration: zone names, prefix key ranges, permission sets, passwords."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from meshcast.store.etcd_auth import (
    MAX_PASSWORD_BYTES,
    _check_password,
    _permissions,
    check_zone_name,
    ensure_user,
    ensure_zone_user,
    prefix_range_end,
    zone_user,
)

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@given(st.from_regex(DNS_LABEL, fullmatch=True))
def test_a_dns_label_is_a_zone_name(zone: str) -> None:
    assert zone_user(zone) == f"meshcast-zone-{zone}"


@given(st.text(max_size=80))
@example("")
@example("-eu")
@example("eu-")
@example("EU")
@example("eu_west")
@example("é")
@example("a" * 64)
@example("eu\nwest")
def test_anything_else_is_refused_in_one_line_naming_the_fault(zone: str) -> None:
    if DNS_LABEL.fullmatch(zone):
        assert check_zone_name(zone) == zone
        return
    with pytest.raises(ValueError) as info:
        zone_user(zone)
    message = str(info.value)
    assert "\n" not in message and len(message) < 200
    if not zone:
        assert message == "zone name is empty"
    elif len(zone) > 63:
        assert f"{len(zone)} characters long: at most 63" in message
    elif bad := [c for c in zone if c not in "abcdefghijklmnopqrstuvwxyz0123456789-"]:
        assert f"contains {bad[0]!r}" in message
    else:
        assert message.endswith(("starts with '-'", "ends with '-'"))


def test_named_faults() -> None:
    for zone, message in [("", "zone name is empty"), ("-eu", "zone name '-eu' starts with '-'"),
                          ("eu-", "zone name 'eu-' ends with '-'"),
                          ("Eu", "zone name 'Eu' contains 'E': use lowercase letters a-z, digits and '-'"),
                          ("a" * 64, f"zone name '{'a' * 59}...' is 64 characters long: at most 63")]:
        with pytest.raises(ValueError) as info:
            check_zone_name(zone)
        assert str(info.value) == message


@given(st.binary(min_size=1, max_size=8), st.binary(max_size=8))
@example(b"/meshcast/v1/", b"zones/eu")
@example(b"a\xff", b"")
@example(b"a\xff", b"\xff\xff")
@example(b"\xff\xff", b"\x00")
def test_the_range_end_bounds_exactly_the_keys_with_the_prefix(prefix: bytes, key: bytes) -> None:
    end = prefix_range_end(prefix)
    inside = prefix + key
    if end == b"\x00":  # only 0xff bytes: etcd reads it as "every key from the prefix on"
        assert prefix.strip(b"\xff") == b""
        return
    assert prefix <= inside < end
    # any key in [prefix, end) starts with the prefix, and no other key lies there
    assert key.startswith(prefix) == (prefix <= key < end)


def test_range_ends_of_the_keyspace() -> None:
    assert prefix_range_end(b"/meshcast/v1/zones/eu/") == b"/meshcast/v1/zones/eu0"
    assert prefix_range_end(b"a\xff\xff") == b"b"
    assert prefix_range_end(b"\xff") == b"\x00"


def test_a_prefix_both_read_and_written_is_readwrite() -> None:
    wanted = _permissions(["/a/", "/b/"], ["/b/"])
    assert {(k, e): int(p) for (k, e), p in wanted.items()} == {(b"/a/", b"/a0"): 0, (b"/b/", b"/b0"): 2}
    with pytest.raises(ValueError, match="expected a list of key prefixes"):
        _permissions("/a/", [])
    for bad in ("", "/\x7f", "/é/"):
        with pytest.raises(ValueError, match="printable ASCII"):
            _permissions([bad], [])


def test_passwords_bcrypt_would_truncate_are_refused() -> None:
    assert _check_password("x" * MAX_PASSWORD_BYTES, "password") == "x" * MAX_PASSWORD_BYTES
    with pytest.raises(ValueError, match="73 bytes long: etcd's bcrypt uses only the first 72"):
        _check_password("x" * 73, "password")
    with pytest.raises(ValueError, match="password is empty"):
        _check_password("", "password")


async def test_arguments_are_checked_before_any_call() -> None:
    # No etcd listens on port 1: each of these must fail on its arguments alone.
    with pytest.raises(ValueError, match="contains '_'"):
        await ensure_zone_user("http://127.0.0.1:1", "root", "pw", "eu_west", "secret")
    with pytest.raises(ValueError, match="managed by enable_auth only"):
        await ensure_user("http://127.0.0.1:1", "root", "pw", "root", "secret", read_prefixes=[], write_prefixes=[])
    with pytest.raises(ValueError, match="cannot manage itself"):
        await ensure_user("http://127.0.0.1:1", "admin", "pw", "admin", "x", read_prefixes=[], write_prefixes=[])
    with pytest.raises(ValueError, match="https:// etcd endpoints need the CA"):
        await ensure_zone_user("https://127.0.0.1:1", "root", "pw", "eu", "secret")
