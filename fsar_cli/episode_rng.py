"""Many seeded episode draws at once: numpy's ``default_rng([seed, i]).choice`` for all i.

Episode ``i`` of seed ``s`` is defined by its own generator, ``np.random.default_rng([s, i])``
(see :mod:`fsar_cli.episodes`): a SeedSequence, a PCG64 bit generator and ``Generator.choice``
without replacement. Drawing 10,000 episodes that way costs about 2 s of Python overhead per call
(``choice`` validates its arguments with numpy functions each time), longer than the arithmetic of
evaluating them. This module runs the same algorithms on all episodes at once, as numpy arrays
with one lane per episode:

- SeedSequence's entropy pool and ``generate_state`` (32-bit hash mixing; the hash constants do
  not depend on the data, so every lane shares them);
- PCG64 (128-bit LCG, multiplier 0x2360ED051FC65DA44385DF649FCCF645, XSL-RR output), with
  64-bit halves and 32-bit limbs for the products, and its buffered 32-bit draws (a 64-bit output
  serves two 32-bit draws, low half first);
- Lemire's bounded integers on 32-bit draws with their rejection step (a lane that rejects draws
  again; the others wait);
- ``choice(replace=False)``'s Floyd sampling (a repeat draw takes the top of the range instead)
  and the Fisher-Yates shuffle that follows it.

The result is the same integers as the per-episode generators, which
``tests/test_episodes.py`` checks against numpy itself over many seeds, ways, shots and class
sizes; :class:`fsar_cli.episodes.EpisodeSampler` falls back to numpy where this does not apply
(seeds of 2**32 and above, drawn views, a class above 10,000 videos).
"""

from __future__ import annotations

import numpy as np

__all__ = ["EpisodeStreams", "supported"]

_M32 = np.uint64(0xFFFFFFFF)
_MULT_HI = np.uint64(0x2360ED051FC65DA4)
_MULT_LO = np.uint64(0x4385DF649FCCF645)

# SeedSequence's hash constants (numpy/random/bit_generator.pyx)
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_POOL = 4


def supported(seed: int, largest_class: int, draws: int) -> bool:
    """Whether the vectorised draw equals numpy's: the seed is one 32-bit word, and every
    ``choice`` uses Floyd's algorithm (numpy shuffles the tail of a large population instead)."""
    floyd = not (largest_class > 10_000 and draws > largest_class // 50)
    return 0 <= seed < 2**32 and floyd


def _mul64(a: np.ndarray, b: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """Full 64 x 64 -> 128-bit product of uint64 ``a`` (array) and ``b``: (high, low)."""
    a0, a1 = a & _M32, a >> np.uint64(32)
    b0, b1 = b & _M32, b >> np.uint64(32)
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> np.uint64(32)) + (p01 & _M32) + (p10 & _M32)
    low = (p00 & _M32) | (mid << np.uint64(32))
    high = p11 + (p01 >> np.uint64(32)) + (p10 >> np.uint64(32)) + (mid >> np.uint64(32))
    return high, low


def _seed_words(seed: int, index: np.ndarray) -> np.ndarray:
    """SeedSequence([seed, i]).generate_state(4, uint64) for every i: uint64 [n, 4]."""
    n = len(index)
    entropy = [np.full(n, seed, np.uint32), index.astype(np.uint32)]
    const = _INIT_A

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal const
        value = value ^ np.uint32(const)
        const = (const * _MULT_A) & 0xFFFFFFFF
        value = value * np.uint32(const)
        return value ^ (value >> np.uint32(16))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r: np.ndarray = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y  # uint32, wrapping
        return r ^ (r >> np.uint32(16))

    zero = np.zeros(n, np.uint32)
    pool = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    words = []
    const_b = _INIT_B
    for i in range(2 * 4):  # 8 uint32 words, little-endian pairs -> 4 uint64
        value = pool[i % _POOL] ^ np.uint32(const_b)
        const_b = (const_b * _MULT_B) & 0xFFFFFFFF
        value = value * np.uint32(const_b)
        words.append((value ^ (value >> np.uint32(16))).astype(np.uint64))
    return np.stack([words[2 * k] | (words[2 * k + 1] << np.uint64(32)) for k in range(4)], 1)


class EpisodeStreams:
    """One PCG64 stream per episode index, seeded as ``np.random.default_rng([seed, index])``.

    Args:
        seed: the run's episode seed (0 <= seed < 2**32).
        index: int64 [n], the episode indices (one lane each).
    """

    def __init__(self, seed: int, index: np.ndarray) -> None:
        with np.errstate(over="ignore"):
            words = _seed_words(int(seed), np.asarray(index, np.int64))  # [n, 4]
        n = len(words)
        # inc = (initseq << 1) | 1, initseq = (words[2] high, words[3] low)
        self.inc_hi = (words[:, 2] << np.uint64(1)) | (words[:, 3] >> np.uint64(63))
        self.inc_lo = (words[:, 3] << np.uint64(1)) | np.uint64(1)
        self.hi = np.zeros(n, np.uint64)
        self.lo = np.zeros(n, np.uint64)
        all_lanes = np.arange(n)
        self._step(all_lanes)
        lo = self.lo + words[:, 1]  # state += initstate (words[0] high, words[1] low)
        self.hi = self.hi + words[:, 0] + (lo < self.lo).astype(np.uint64)
        self.lo = lo
        self._step(all_lanes)
        self.has32 = np.zeros(n, bool)
        self.buf32 = np.zeros(n, np.uint64)

    def _step(self, lanes: np.ndarray) -> None:
        """state = state * multiplier + inc (mod 2**128) on ``lanes``."""
        hi, lo = self.hi[lanes], self.lo[lanes]
        p_hi, p_lo = _mul64(lo, _MULT_LO)
        p_hi = p_hi + lo * _MULT_HI + hi * _MULT_LO
        new_lo = p_lo + self.inc_lo[lanes]
        self.hi[lanes] = p_hi + self.inc_hi[lanes] + (new_lo < p_lo).astype(np.uint64)
        self.lo[lanes] = new_lo

    def _next64(self, lanes: np.ndarray) -> np.ndarray:
        """PCG64's output (XSL-RR of the stepped state) on ``lanes``."""
        self._step(lanes)
        hi, lo = self.hi[lanes], self.lo[lanes]
        x = hi ^ lo
        rot = hi >> np.uint64(58)
        return (x >> rot) | (x << ((np.uint64(64) - rot) & np.uint64(63)))

    def next32(self, lanes: np.ndarray) -> np.ndarray:
        """The next 32-bit draw (as uint64) of each lane in ``lanes``."""
        out = np.empty(len(lanes), np.uint64)
        buffered = self.has32[lanes]
        if buffered.any():
            b = lanes[buffered]
            out[buffered] = self.buf32[b]
            self.has32[b] = False
        fresh = ~buffered
        if fresh.any():
            f = lanes[fresh]
            x = self._next64(f)
            out[fresh] = x & _M32
            self.buf32[f] = x >> np.uint64(32)
            self.has32[f] = True
        return out

    def bounded(self, top: np.ndarray) -> np.ndarray:
        """A uniform integer in ``0 .. top`` (inclusive) per lane (``top`` < 2**32 - 1), as
        numpy's ``random_bounded_uint64`` draws it: Lemire on 32-bit draws; ``top`` 0 draws
        nothing."""
        top = np.asarray(top, np.uint64)
        out = np.zeros(len(top), np.uint64)
        act = np.flatnonzero(top > 0)
        if not len(act):
            return out
        excl = top[act] + np.uint64(1)
        m = self.next32(act) * excl
        left = m & _M32
        threshold = (np.uint64(2**32) - excl) % excl
        bad = left < threshold  # implies left < excl, numpy's cheap pre-check
        while bad.any():
            idx = np.flatnonzero(bad)
            m[idx] = self.next32(act[idx]) * excl[idx]
            left[idx] = m[idx] & _M32
            bad[idx] = left[idx] < threshold[idx]
        out[act] = m >> np.uint64(32)
        return out

    def choice(self, population: np.ndarray, size: int) -> np.ndarray:
        """``Generator.choice(range(population), size, replace=False)`` per lane (Floyd, then
        shuffled): int64 [lanes, size] indices into each lane's population."""
        pop = np.asarray(population, np.int64)
        n = len(pop)
        idx = np.empty((n, size), np.int64)
        for k in range(size):
            j = pop - size + k  # per lane
            val = self.bounded(j.astype(np.uint64)).astype(np.int64)
            seen = (idx[:, :k] == val[:, None]).any(axis=1) if k else np.zeros(n, bool)
            idx[:, k] = np.where(seen, j, val)
        rows = np.arange(n)
        for i in range(size - 1, 0, -1):
            jj = self.bounded(np.full(n, i, np.uint64)).astype(np.int64)
            a, b = idx[rows, jj].copy(), idx[:, i].copy()
            idx[rows, jj] = b
            idx[:, i] = a
        return idx
