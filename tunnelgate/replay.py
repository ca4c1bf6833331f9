"""Sliding-window replay protection (RFC 6479 ring of words).

A ring of 64-bit words instead of one shifted bitmap: advancing the window
only zeroes the words it passes over, so a far jump costs at most RING_WORDS
stores and an in-order counter costs none.
"""

from __future__ import annotations

from .wire import REJECT_AFTER_MESSAGES

WORD_BITS = 64
RING_WORDS = 64
_RING_MASK = RING_WORDS - 1
# One word is the one being filled, so the guaranteed window is a word short.
WINDOW = (RING_WORDS - 1) * WORD_BITS


class ReplayWindow:
    """Counters are stored +1 internally so that counter 0 is valid and the
    fresh state (top = 0) means "nothing seen"."""

    __slots__ = ("_top", "_ring")

    def __init__(self) -> None:
        self._top = 0
        self._ring = [0] * RING_WORDS

    @property
    def top(self) -> int:
        """The highest counter seen + 1 (0: none yet)."""
        return self._top

    def update(self, counter: int) -> bool:
        """Mark `counter` seen; False (nothing changed) if it was not fresh. Call
        only after the datagram authenticated, or forged counters would slide
        the window."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        c = counter + 1
        top = self._top
        ring = self._ring
        if c > top:
            cur = top >> 6
            new = c >> 6
            if new != cur:  # the common in-order case stays in the same word
                for i in range(1, min(new - cur, RING_WORDS) + 1):
                    ring[(cur + i) & _RING_MASK] = 0
            self._top = c
        elif c + WINDOW < top:
            return False
        i = (c >> 6) & _RING_MASK
        bit = 1 << (c & 63)
        word = ring[i]
        if word & bit:
            return False
        ring[i] = word | bit
        return True
