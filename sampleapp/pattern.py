"""The deterministic body that `/?bytes=` and `/download` send, and its checksum.

Byte k of every body is `ALPHABET[k % len(ALPHABET)]`: printable lines of 62 characters, so a body
is readable in a terminal and any reader can check it without a copy. Bodies are sent as slices
of one precomputed block whose length is a multiple of the period, so every chunk starts at
offset 0 of the pattern and costs no allocation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

ALPHABET = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\n"
CHUNK_SIZE = len(ALPHABET) * 1040  # 65,520 bytes: near 64 KiB, a whole number of periods
_BLOCK = memoryview(ALPHABET * (CHUNK_SIZE // len(ALPHABET)))


def pattern_bytes(size: int) -> bytes:
    """The first `size` bytes of the pattern (for small bodies and for tests)."""
    periods, rest = divmod(size, len(ALPHABET))
    return ALPHABET * periods + ALPHABET[:rest]


def pattern_chunks(size: int) -> Iterator[memoryview]:
    """The first `size` bytes of the pattern, in chunks of at most CHUNK_SIZE."""
    full, rest = divmod(size, CHUNK_SIZE)
    for _ in range(full):
        yield _BLOCK
    if rest:
        yield _BLOCK[:rest]


def pattern_sha256(size: int) -> str:
    """Hex SHA-256 of the first `size` bytes, hashed chunk by chunk (constant memory)."""
    digest = hashlib.sha256()
    for chunk in pattern_chunks(size):
        digest.update(chunk)
    return digest.hexdigest()
