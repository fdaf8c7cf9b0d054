"""The work and faults a request can ask for: CPU, memory, and seeded failure draws."""

from __future__ import annotations

import random
from collections import OrderedDict
from math import isqrt

MIB = 1 << 20
PAGE_SIZE = 4096


def largest_prime_at_most(limit: int) -> int | None:
    """The largest prime <= limit (None below 2), by trial-dividing every odd number up to limit.

    Deliberately the slow way: the cost grows with limit, which is what makes `?prime=` a CPU knob.
    """
    if limit < 2:
        return None
    largest = 2
    root = isqrt(limit)
    odd_primes_to_root: list[int] = []
    for candidate in range(3, limit + 1, 2):
        is_prime = True
        for divisor in odd_primes_to_root:
            if divisor * divisor > candidate:
                break
            if candidate % divisor == 0:
                is_prime = False
                break
        if is_prime:
            largest = candidate
            if candidate <= root:
                odd_primes_to_root.append(candidate)
    return largest


def ballast(mib: int) -> bytearray:
    """`mib` MiB of memory with every page written, so it counts in the process's RSS."""
    buffer = bytearray(mib * MIB)
    buffer[::PAGE_SIZE] = b"\x01" * len(range(0, len(buffer), PAGE_SIZE))
    return buffer


class FaultDice:
    """Draws in [0, 1) that decide injected failures.

    With a seed, the k-th draw for that seed is the k-th `random.Random(seed).random()`, so a
    load run that sends the same seed replays the same failures in the same order. Without one,
    draws come from an unseeded generator.
    """

    def __init__(self, max_seeds: int = 1024) -> None:
        self._max_seeds = max_seeds  # bounds memory when clients send a fresh seed per request
        self._by_seed: OrderedDict[int, random.Random] = OrderedDict()
        self._unseeded = random.Random()

    def roll(self, seed: int | None) -> float:
        if seed is None:
            return self._unseeded.random()
        generator = self._by_seed.get(seed)
        if generator is None:
            generator = self._by_seed[seed] = random.Random(seed)
            if len(self._by_seed) > self._max_seeds:
                self._by_seed.popitem(last=False)
        else:
            self._by_seed.move_to_end(seed)
        return generator.random()
