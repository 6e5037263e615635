"""Deterministic download content: clients check what they got byte for byte."""

import hashlib


def sample_bytes(size):
    """Non-repeating bytes (a chain of SHA-256 blocks), the same for a size everywhere."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])
