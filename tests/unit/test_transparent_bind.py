"""Which address a transparent backend socket binds to (pure)."""

import socket

from pen.transparent import MISSING_CAPABILITY, bind_address

V4, V6 = socket.AF_INET, socket.AF_INET6


def test_ipv4_client_to_ipv4_server_binds_the_client_ip_any_port():
    assert bind_address(("10.1.2.3", 40000), V4) == ("10.1.2.3", 0)


def test_mapped_ipv4_client_from_a_dual_stack_listener_is_unmapped():
    assert bind_address(("::ffff:10.1.2.3", 40000, 0, 0), V4) == ("10.1.2.3", 0)
    assert bind_address(("::ffff:10.1.2.3", 40000, 0, 0), V6) is None


def test_ipv6_client_keeps_its_scope():
    assert bind_address(("fd00::5", 40000, 0, 3), V6) == ("fd00::5", 0, 0, 3)
    assert bind_address(("fe80::1%eth0", 1, 0, 2), V6) == ("fe80::1", 0, 0, 2)


def test_families_that_cannot_match_are_left_alone():
    assert bind_address(("fd00::5", 40000, 0, 0), V4) is None
    assert bind_address(("10.1.2.3", 1), V6) is None
    assert bind_address("/tmp/sock", V4) is None          # a UNIX client
    assert bind_address(("10.1.2.3", 1), socket.AF_UNIX) is None


def test_the_missing_capability_is_named():
    assert "CAP_NET_ADMIN" in MISSING_CAPABILITY and MISSING_CAPABILITY.startswith("transparent:")
