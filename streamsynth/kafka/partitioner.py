"""Kafka's default partition of a message: murmur2 of the key, as every client computes it.

Both sinks, the at-least-once one (:mod:`~streamsynth.kafka.sink`) and the transactional
one (:mod:`~streamsynth.kafka.transactions`), partition each output here, once, and hand
the partition to the producer with its batch, so the producer never hashes the key again.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_WORDS: dict[int, Callable[[bytes], tuple[int, ...]]] = {}


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` (``Utils.murmur2``), equal to aiokafka's ``murmur2``.

    aiokafka's reads the key byte by byte in Python; this unpacks the 4-byte
    little-endian words at once, which halves the cost of partitioning an output.
    """
    length = len(data)
    h = 0x9747B28C ^ length
    count = length >> 2
    if count:
        unpack = _WORDS.get(count)
        if unpack is None:
            unpack = _WORDS[count] = struct.Struct(f"<{count}I").unpack_from
        for k in unpack(data):
            k = (k * _M) & _MASK
            k ^= k >> 24
            h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail = length & 3
    if tail:
        base = length - tail
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def key_partition(key: bytes, partitions: Sequence[int]) -> int:
    """The partition of ``key`` among the topic's ``partitions`` (sorted), as Kafka's
    DefaultPartitioner picks it: the hash's positive part, modulo the count."""
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


def keyless_partition(partitions: Sequence[int], available: Sequence[int]) -> int:
    """The partition of a message without a key, as DefaultPartitioner picks it: one at
    random among the ``available`` partitions (among all when none is known available)."""
    return random.choice(available or partitions)
