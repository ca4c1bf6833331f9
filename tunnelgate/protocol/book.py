"""A contract book: one counterpart's live, queued and ended contracts.

Every lookup the engines do is an index here, never a walk of the history:

- ``live``: proposals and accepted contracts not ended, by id;
- ``flows``: the counterpart's flows (a destination's current contract, its queue, its
  proposal, its no-deal back-off), by destination key (the seller's are the meter's own
  per-peer dict, so the hot path and the book share one table);
- ``ended``: tombstones by id (late payments, USAGE requests, a restart's "never again"),
  bounded over all books of an engine by one shared ``Tombstones`` ring;
- ``unpaid``: accepted contracts whose payment is still due, live or ended;
- timers: a heap of (when, n, kind, object), invalidated lazily (an entry whose deadline no
  longer matches its object's is skipped), so ``next_deadline()`` is the top of the heap and a
  poll costs what is due; when the heap has doubled since it was last swept, the entries its
  engine calls stale and repeats of one timer go (a paid contract's grace end, an accepted
  proposal's timeout would otherwise stay for minutes: memory per contract at a gateway).
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Iterator

from tunnelgate.protocol.contract import Contract


SWEEP_MIN = 64      # timers a book holds before the first sweep of stale ones


class Tombstones:
    """Ended contracts of all books of one engine, oldest first, at most ``cap`` (then the
    oldest ``trim`` go at once): a bounded memory of what ended, indexed per book by id."""

    def __init__(self, cap: int = 1024, trim: int = 256):
        self.cap, self.trim = cap, trim
        self._order: deque[tuple["Book", str]] = deque()

    def add(self, book: "Book", c: Contract) -> None:
        """A contract retired again (e.g. restored over a run that had already ended it) keeps
        its one place in the order, the newer object replacing the older: ``_order`` holds each
        (book, id) once, so ``contracts()`` shows it once and a trim of its old place cannot
        drop it while a newer place remains."""
        if c.contract_id in book.ended:
            book.ended[c.contract_id] = c
            return
        book.ended[c.contract_id] = c
        self._order.append((book, c.contract_id))
        if len(self._order) > self.cap:
            for _ in range(self.trim):
                b, cid = self._order.popleft()
                b.ended.pop(cid, None)

    def __len__(self) -> int:
        return len(self._order)

    def contracts(self) -> Iterator[Contract]:
        """Oldest first, each once (see ``add``)."""
        for b, cid in self._order:
            c = b.ended.get(cid)
            if c is not None:
                yield c


class Book:
    __slots__ = ("counterpart", "live", "flows", "ended", "unpaid", "tombstones", "_timers", "filed",
                 "_sweep_at")

    def __init__(self, counterpart: bytes, tombstones: Tombstones | None = None, flows: dict | None = None):
        self.counterpart = counterpart
        self.live: dict[str, Contract] = {}
        self.flows: dict = flows if flows is not None else {}
        self.ended: dict[str, Contract] = {}
        self.unpaid: dict[str, Contract] = {}
        self.tombstones = tombstones if tombstones is not None else Tombstones()
        self._timers: list[tuple[float, int, int, object]] = []
        self.filed: float | None = None     # the deadline the engine filed this book under
        self._sweep_at = SWEEP_MIN          # heap size at which stale timers are swept out

    def find(self, contract_id: str | None) -> Contract | None:
        """A contract this book knows, live or ended."""
        c = self.live.get(contract_id)
        return c if c is not None else self.ended.get(contract_id)

    def add(self, c: Contract) -> None:
        self.live[c.contract_id] = c

    def retire(self, c: Contract, now: float) -> None:
        """The contract ended (or a proposal came to nothing): from live to the tombstones."""
        c.ended_at = now
        self.live.pop(c.contract_id, None)
        self.tombstones.add(self, c)

    def owe(self, c: Contract) -> None:
        self.unpaid[c.contract_id] = c

    def settle(self, c: Contract) -> None:
        self.unpaid.pop(c.contract_id, None)

    # --- timers ----------------------------------------------------------------------------

    def at(self, when: float, n: int, kind: int, obj, stale=None) -> bool:
        """A timer; True when it is now the book's earliest (the engine re-files the book).
        ``stale(book, when, kind, obj)``: True for a timer that can no longer do anything,
        asked of every timer when the heap has doubled since the last sweep (amortized
        O(1) a timer). The earliest may go: the engine then wakes once for nothing."""
        h = self._timers
        earliest = not h or when < h[0][0]
        heapq.heappush(h, (when, n, kind, obj))
        if stale is not None and len(h) >= self._sweep_at:
            # the stale go, and of the same timer filed twice (a contract's expiry, when it
            # starts in grace and again when paid) the first stays
            keep: dict[tuple, tuple] = {}
            for e in h:
                k = (e[0], e[2], id(e[3]))
                if (k not in keep or e[1] < keep[k][1]) and not stale(self, e[0], e[2], e[3]):
                    keep[k] = e
            h[:] = keep.values()             # in place: due() may hold h
            heapq.heapify(h)
            self._sweep_at = max(SWEEP_MIN, 2 * len(h))
        return earliest

    def next_deadline(self) -> float | None:
        """When the next timer is due (maybe one since invalidated: a wake-up too many, never
        one too few), or None."""
        return self._timers[0][0] if self._timers else None

    def due(self, now: float, first_new: int) -> Iterator[tuple[float, int, object]]:
        """Pops what is due; timers set after ``first_new`` (while this runs) wait."""
        h, later = self._timers, []
        while h and h[0][0] <= now:
            entry = heapq.heappop(h)
            if entry[1] > first_new:
                later.append(entry)
                continue
            yield entry[0], entry[2], entry[3]
        for entry in later:
            heapq.heappush(h, entry)
