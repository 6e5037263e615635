"""Address grammar and access lists: pure, no sockets."""

import ipaddress
import socket

import pytest

from pen.acl import AccessLists, AclError, parse_entry
from pen.addr import AddressError, client_ip, parse_listen, parse_server


@pytest.mark.parametrize("text, host, port", [
    ("8080", None, 8080),
    ("127.0.0.1:8080", "127.0.0.1", 8080),
    (":::8080", "::", 8080),
    ("[::1]:8080", "::1", 8080),
    ("localhost:http", "localhost", 80),
])
def test_listen_addresses(text, host, port):
    endpoint = parse_listen(text)
    assert (endpoint.host, endpoint.port) == (host, port)


def test_listen_unix_path():
    endpoint = parse_listen("/run/pen.sock")
    assert endpoint.is_unix and endpoint.family == socket.AF_UNIX


@pytest.mark.parametrize("text", ["", "host:", "99999", "nosuchservice"])
def test_bad_listen_addresses(text):
    with pytest.raises(AddressError):
        parse_listen(text)


def test_server_spec_all_fields():
    spec = parse_server("www1:8000:10:20:3:1", 80)
    assert (spec.endpoint.host, spec.endpoint.port) == ("www1", 8000)
    assert (spec.max, spec.hard, spec.weight, spec.prio) == (10, 20, 3, 1)


def test_server_spec_defaults_to_listen_port():
    spec = parse_server("www3", 80)
    assert spec.endpoint.port == 80 and spec.max == 0


def test_server_spec_ipv6_and_empty_fields():
    spec = parse_server("[2001:db8::1]:81::5", 80)
    assert (spec.endpoint.host, spec.endpoint.port, spec.max, spec.hard) == ("2001:db8::1", 81, 0, 5)


@pytest.mark.parametrize("text", ["::1", "[::1", "[::1]x", "h:1:a", "h:1:2:3:4:5:6", ":80"])
def test_bad_server_specs(text):
    with pytest.raises(AddressError):
        parse_server(text, 80)


def test_client_ip_folds_mapped_ipv4():
    assert client_ip(("::ffff:10.1.2.3", 5, 0, 0)) == ipaddress.ip_address("10.1.2.3")
    assert client_ip("") is None


def ip(text):
    return ipaddress.ip_address(text)


def test_empty_acl_permits_everyone():
    assert AccessLists().permits(1, ip("192.0.2.1"))


def test_first_match_decides_and_no_match_is_opposite_of_last():
    acls = AccessLists()
    acls.add(1, parse_entry("deny", "10.1.0.0", "255.255.0.0"))
    acls.add(1, parse_entry("permit", "10.0.0.0", "255.0.0.0"))
    assert not acls.permits(1, ip("10.1.2.3"))          # first entry matches
    assert acls.permits(1, ip("10.2.0.1"))              # second entry matches
    assert not acls.permits(1, ip("192.0.2.1"))         # none: opposite of last (permit)


def test_ipv6_prefix_entries():
    acls = AccessLists()
    acls.add(2, parse_entry("deny", "2001:db8::/32"))
    assert not acls.permits(2, ip("2001:db8::5"))
    assert acls.permits(2, ip("2001:db9::5"))
    assert acls.permits(2, ip("10.0.0.1"))              # other family never matches: opposite


def test_acl_errors():
    with pytest.raises(AclError):
        parse_entry("allow", "1.2.3.4")
    with pytest.raises(AclError):
        parse_entry("permit", "1.2.3.999")
    with pytest.raises(AclError):
        AccessLists().add(10, parse_entry("permit", "1.2.3.4"))


def test_acl_commands_round_trip():
    acls = AccessLists()
    acls.add(3, parse_entry("permit", "10.0.0.0", "255.0.0.0"))
    acls.add(3, parse_entry("deny", "::1/128"))
    assert "acl 3 permit 10.0.0.0 255.0.0.0" in acls.commands()
    assert "acl 3 deny ::1/128" in acls.commands()
