"""udp2raw's 'simple' auth tag without a per-byte Python loop: h1 (djb2 with xor) || h2 (sdbm).

    h1 = 5381;  h1 = h1 * 33 ^ byte      (mod 2**32, for every byte)
    h2 = 0;     h2 = h2 * 65599 + byte   (mod 2**32)

h2 is linear in the bytes: one C-level dot product with precomputed powers of 65599.

h1 is not linear, but its non-linear part is only 8 bits wide. Write h = 256*H + l (l the low byte).
The xor touches only l, so one step is
    l' = A(l) ^ byte,  H' = 33*H + q(l)      with A(l) = 33*l mod 256 and q(l) = 33*l >> 8 (0..32)
and after n bytes H = 33**n * H0 + sum(q(l_m) * 33**(n-1-m)): the digits q(l_0) .. q(l_{n-1}) read
in base 33, which `int(digits, 33)` does in C. What is left is the sequence of low bytes l_m, and it
falls apart bit by bit, lowest first, each bit a prefix xor of things already known:
  bits 0-4: 33*l == l (mod 32), so they are the running xor of the bytes' bits 0-4;
  bits 5-7: A adds the low 3 bits of l to its high 3 bits, so bit k of l' is bit k of l, xor the
            input bit, xor that add's sum bit (the carry comes from lower bits, already computed).
All bytes are processed at once as 8-bit lanes of one big int, and a prefix xor over the lanes is
log2(n) shift-and-xor steps, so four such passes replace n rounds of the interpreter.
"""

from __future__ import annotations

import operator

Buffer = bytes | bytearray | memoryview

MAX_LEN = 2048  # longest input (udp2raw never tags more than 1800 bytes)

_M32 = 0xFFFFFFFF
_SDBM_POWERS = [pow(65599, MAX_LEN - 1 - i, 1 << 32) for i in range(MAX_LEN)]
_H0, _L0 = divmod(5381, 256)  # djb2's start, split as h = 256*H + l
_BASE33 = b"0123456789abcdefghijklmnopqrstuvw"
_Q_DIGIT = bytes(_BASE33[33 * low >> 8] for low in range(256))  # l -> q(l) as a base-33 digit
_H_CHUNK = 128  # digits per int() call: its cost grows with the square of the length
_H_POWERS = [pow(33, k, 1 << 24) for k in range(_H_CHUNK + 1)]  # H only matters mod 2**24


def _lanes(byte: int) -> int:
    """`byte` repeated in all MAX_LEN lanes; shifted right to fit shorter inputs."""
    return int.from_bytes(bytes([byte]) * MAX_LEN, "big")


_ONES, _LOW5, _BIT5, _BIT6, _BIT7 = (_lanes(b) for b in (0x01, 0x1F, 0x20, 0x40, 0x80))


def _prefix_xor(lanes: int, n: int) -> int:
    """Lane i becomes the xor of lanes 0..i (lane 0 the most significant of n)."""
    shift = 8
    while shift < 8 * n:
        lanes ^= lanes >> shift
        shift <<= 1
    return lanes


def _low_bytes(data: Buffer) -> tuple[int, int]:
    """(l_1 .. l_n, l_0 .. l_(n-1)) as n-lane ints: h1's low byte after and before each input byte."""
    n = len(data)
    cut, first = 8 * (MAX_LEN - n), _L0 << 8 * (n - 1)
    ones, x = _ONES >> cut, int.from_bytes(data, "big")
    after = _prefix_xor(x & (_LOW5 >> cut), n) ^ (_L0 * ones)  # l_0 = 5 has bits 5-7 clear
    before = (after >> 8) | first
    # bit 5 = l5 ^ l0 (the add's sum bit) ^ input
    after |= _prefix_xor(((before & ones) << 5) ^ (x & (_BIT5 >> cut)), n)
    before = (after >> 8) | first
    carry0 = (before >> 5) & before & ones  # l5 & l0
    # bit 6 = l6 ^ l1 ^ carry0 ^ input
    after |= _prefix_xor(((((before >> 1) & ones) ^ carry0) << 6) ^ (x & (_BIT6 >> cut)), n)
    before = (after >> 8) | first
    high, low = (before >> 6) & ones, (before >> 1) & ones
    carry1 = (high & low) | (carry0 & (high ^ low))  # majority(l6, l1, carry0)
    # bit 7 = l7 ^ l2 ^ carry1 ^ input
    after |= _prefix_xor(((((before >> 2) & ones) ^ carry1) << 7) ^ (x & (_BIT7 >> cut)), n)
    return after, (after >> 8) | first


def djb2_xor(data: Buffer) -> int:
    """h1: djb2 with xor, mod 2**32."""
    n = len(data)
    if not n:
        return _H0 << 8 | _L0
    after, before = _low_bytes(data)
    digits, high = before.to_bytes(n, "big").translate(_Q_DIGIT), _H0
    for start in range(0, n, _H_CHUNK):
        chunk = digits[start : start + _H_CHUNK]
        high = (high * _H_POWERS[len(chunk)] + int(chunk, 33)) & 0xFFFFFF
    return ((high << 8) | (after & 0xFF)) & _M32


def simple_tag(data: Buffer) -> bytes:
    """udp2raw's 'simple' auth tag of `data` (at most MAX_LEN bytes): h1 || h2, each u32 big-endian."""
    h2 = sum(map(operator.mul, data, _SDBM_POWERS[MAX_LEN - len(data) :]))
    return (djb2_xor(data) << 32 | h2 & _M32).to_bytes(8, "big")
