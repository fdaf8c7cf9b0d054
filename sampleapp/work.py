"""The work and faults a request can ask for: CPU, memory, and seeded failure draws."""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Callable
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


# A seed's sequence starts over once the seed has not been used for this long, so that two runs
# of the same requests (a curl loop, a load test) see the same failures in the same order.
SEQUENCE_RESTART_SECONDS = 1.0


class FaultDice:
    """Draws in [0, 1) that decide injected failures.

    With a seed, the k-th draw of a run is the k-th `random.Random(seed).random()`, where a run is
    the requests carrying that seed with less than `restart_after` seconds between one and the
    next: the first request after a quiet second starts the sequence again. So the same requests
    in the same order fail the same way, in any run, against the same or a restarted app. (Order
    is the order the app receives them: concurrent clients, or a proxy queueing them, may change
    it.) Seeds are independent of each other. Without a seed, draws come from an unseeded
    generator.
    """

    def __init__(
        self,
        max_seeds: int = 1024,
        restart_after: float = SEQUENCE_RESTART_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_seeds = max_seeds  # bounds memory when clients send a fresh seed per request
        self._restart_after = restart_after
        self._clock = clock
        # seed -> (its generator, when it was last drawn from)
        self._by_seed: OrderedDict[int, tuple[random.Random, float]] = OrderedDict()
        self._unseeded = random.Random()

    def roll(self, seed: int | None) -> float:
        if seed is None:
            return self._unseeded.random()
        now = self._clock()
        entry = self._by_seed.pop(seed, None)
        if entry is None or now - entry[1] >= self._restart_after:
            generator = random.Random(seed)
        else:
            generator = entry[0]
        # Re-inserted at the end: the least recently used seed is the one dropped when full.
        self._by_seed[seed] = (generator, now)
        if len(self._by_seed) > self._max_seeds:
            self._by_seed.popitem(last=False)
        return generator.random()
