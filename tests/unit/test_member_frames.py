"""The parent <-> worker channel's frames: what one side sends the other reads back, and
bytes that are not a frame end in ChannelError or ValueError, never anything else."""

from __future__ import annotations

import json
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pen.member import MAX_FRAME, ChannelError, recv_frame, send_frame

documents = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)


@given(st.dictionaries(st.text(max_size=10), documents, max_size=5))
def test_a_frame_reads_back_as_sent(document):
    a, b = socket.socketpair()
    with a, b:
        send_frame(a, document)
        assert recv_frame(b) == json.loads(json.dumps(document))


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_bytes_that_are_not_a_frame_are_refused_cleanly(data):
    a, b = socket.socketpair()
    with a, b:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        try:
            recv_frame(b)
        except (ChannelError, ValueError):
            pass


def test_an_oversized_frame_is_refused_before_it_is_read():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack("!I", MAX_FRAME + 1))
        with pytest.raises(ChannelError, match="frame of"):
            recv_frame(b)


def test_the_end_of_the_channel_is_none():
    a, b = socket.socketpair()
    with b:
        a.close()
        assert recv_frame(b) is None
