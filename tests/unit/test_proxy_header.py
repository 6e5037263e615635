"""The PROXY protocol header (pen/proxy_protocol.py): examples from HAProxy's spec, what
is refused, and hypothesis: what build() writes, parse() reads back, at any split."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pen.errors import Refused
from pen.proxy_protocol import (
    V1_MAX,
    V2_MAX,
    V2_SIGNATURE,
    ProxyError,
    RefuseHeaders,
    build,
    needed,
    parse,
)


def test_v1_tcp4_and_tcp6():
    line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET /"
    header = parse(line)
    assert (header.version, header.length) == (1, len(line) - 5)
    assert header.source == ("192.168.0.1", 56324)
    assert header.destination == ("192.168.0.11", 443)
    header = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n")
    assert header.source == ("2001:db8::1", 1)


def test_v1_unknown_carries_no_address():
    assert parse(b"PROXY UNKNOWN\r\n").source is None
    assert parse(b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n").source is None


def test_v2_inet_and_local():
    header = parse(build(2, ("10.1.2.3", 4000), ("10.9.9.9", 80)) + b"payload")
    assert (header.version, header.source, header.destination) == (
        2, ("10.1.2.3", 4000), ("10.9.9.9", 80))
    assert header.length == 16 + 12
    local = parse(V2_SIGNATURE + b"\x20\x00\x00\x00")
    assert local.source is None and local.length == 16


def test_v2_tlvs_are_skipped():
    block = bytes(4) + bytes(4) + b"\0\1\0\2" + b"\x04\x00\x03abc"        # a NOOP TLV
    data = V2_SIGNATURE + b"\x21\x11" + len(block).to_bytes(2, "big") + block
    assert parse(data).length == len(data)


@pytest.mark.parametrize("data, reason", [
    (b"GET / HTTP/1.1\r\n", "no PROXY header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "malformed"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.004 5.6.7.8 1 2\r\n", "bad address"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "bad address"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "malformed"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "malformed"),
    (b"PROXY " + b"x" * 200, "longer than 107"),
    (V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12), "unknown version"),
    (V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "unknown command"),
    (V2_SIGNATURE + b"\x21\x31\x00\x0c" + bytes(12), "unsupported family"),
    (V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4), "too short"),
    (V2_SIGNATURE + b"\x21\x11\xff\xff", "at most"),
])
def test_refused(data, reason):
    with pytest.raises(ProxyError, match=reason):
        parse(data)


def test_needed_asks_for_no_byte_past_the_header():
    v1 = b"PROXY UNKNOWN\r\n"
    for cut in range(1, len(v1)):
        assert len(v1[:cut]) < needed(v1[:cut]) <= V1_MAX
    assert needed(v1 + b"more") == len(v1)
    v2 = build(2, ("::1", 1), ("::1", 2))
    assert needed(v2[:5]) == 16 and needed(v2[:16]) == len(v2) == needed(v2 + b"x")


addresses = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
ports = st.integers(0, 65535)


@given(version=st.sampled_from([1, 2]), src=addresses, dst=addresses, sport=ports,
       dport=ports, tail=st.binary(max_size=20), cut=st.integers(0, 200))
def test_what_build_writes_parse_reads_back_at_any_split(version, src, dst, sport, dport,
                                                         tail, cut):
    data = build(version, (src, sport), (dst, dport))
    assert len(data) <= (V1_MAX if version == 1 else V2_MAX)
    header = parse(data + tail)
    assert header.length == len(data)

    def same(a, b):
        a, b = ipaddress.ip_address(a), ipaddress.ip_address(b)
        unmap = lambda ip: ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip  # noqa: E731
        return unmap(a) == unmap(b)
    assert same(header.source[0], src) and header.source[1] == sport
    assert same(header.destination[0], dst) and header.destination[1] == dport
    part = data[:min(cut, len(data) - 1)]
    if part:
        assert parse(part) is None                 # incomplete: wait, never misread


@given(st.binary(max_size=300))
def test_any_bytes_parse_refuse_or_ask_for_more_within_bounds(data):
    try:
        header = parse(data)
    except ProxyError:
        return
    if header is None:
        assert needed(data) <= V2_MAX
    else:
        assert header.length <= len(data)


def fed(transform, chunks) -> bytes:
    """What a transform passes on for these chunks, then EOF."""
    return b"".join(transform.feed(chunk) for chunk in chunks) + transform.flush()


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@pytest.mark.parametrize("start", [b"PROXY ", V2_SIGNATURE])
def test_an_untrusted_peers_header_is_refused_however_it_is_split(start):
    data = start + b"TCP4 10.9.9.9 127.0.0.1 1 80\r\nGET / HTTP/1.0\r\n\r\n"
    for cut in range(1, len(start) + 2):
        guard = RefuseHeaders()
        with pytest.raises(Refused) as refused:
            fed(guard, [data[:1], data[1:cut], data[cut:]])
        assert refused.value.event == "proxy_refused" and refused.value.answer == b""


def test_bytes_that_only_begin_like_a_header_are_held_then_passed_on():
    guard = RefuseHeaders()
    assert guard.feed(b"PRO") == b""                   # could still be "PROXY "
    assert guard.feed(b"PERTY") == b"PROPERTY"
    assert guard.feed(b"PROXY later") == b"PROXY later"   # only the start is looked at
    assert fed(RefuseHeaders(), [b"\r\n\r\n"]) == b"\r\n\r\n"   # EOF: what was held


@given(st.binary(max_size=40), st.lists(st.integers(0, 40), max_size=4))
def test_anything_else_passes_whole_at_any_split(data, cuts):
    chunks = splits(data, cuts)
    if data.startswith((b"PROXY ", V2_SIGNATURE)):
        with pytest.raises(Refused):
            fed(RefuseHeaders(), chunks)
    else:
        assert fed(RefuseHeaders(), chunks) == data


def test_the_next_transform_gets_what_passes():
    class Upper:
        def feed(self, data):
            return data.upper()

        def flush(self):
            return b"!"
    assert fed(RefuseHeaders(Upper()), [b"PR", b"OD"]) == b"PROD!"
    assert fed(RefuseHeaders(Upper()), [b"PR"]) == b"PR!"
