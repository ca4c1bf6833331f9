"""The contract lifecycle both roles share: books per counterpart, the current contract of a
flow, its activation, its end, its retirement to a tombstone, timers, events and the flow
records of a snapshot.

``Lifecycle`` is the base of ``Seller`` (protocol/seller.py) and ``Buyer``
(protocol/buyer.py); what differs by side is in a few hooks: ``_may_forward`` (may a contract
forward before it is paid), ``_arm`` (the hot-path limits), ``_activated``/``_ending``/
``_ended`` (side bookkeeping) and ``_emitted`` (what an event marks for saving).
The transitions themselves are the table in protocol/contract.py.
"""

from __future__ import annotations

import heapq
import itertools

from tunnelgate.meter import Flow
from tunnelgate.protocol import events as E
from tunnelgate.protocol.book import Book, Tombstones
from tunnelgate.protocol.contract import FORWARDING, Contract, Ev, State

ENDED_EVENT = {Ev.EXHAUST: E.Exhausted, Ev.EXPIRE: E.Expired, Ev.REVOKE: E.Revoked}


class Lifecycle:
    SIDE = ""
    BOOK = Book

    def __init__(self, history_kept: int = 1024):
        self.books: dict[bytes, Book] = {}
        self.tombstones = Tombstones(history_kept)
        self._events: list[E.ContractEvent] = []
        # books with a timer, by their earliest deadline (see _at / _due)
        self._filed: list[tuple[float, int, Book]] = []
        self._sweep_at = 64             # size of _filed at which stale entries are swept
        self._tn = itertools.count()
        # bumped when an accepted contract ends: the daemon writes the change through before
        # it forwards anything more, so an ended contract cannot come back after a crash
        self.durable_seq = 0

    def _book(self, counterpart: bytes) -> Book:
        b = self.books.get(counterpart)
        if b is None:
            b = self.books[counterpart] = self.BOOK(counterpart, self.tombstones)
        return b

    def find(self, contract_id: str, counterpart: bytes | None = None) -> Contract | None:
        """A contract this run knows (live, or ended and still a tombstone); without a
        counterpart, in any book (ids are the seller's: unique per seller)."""
        if counterpart is not None:
            b = self.books.get(counterpart)
            return b.find(contract_id) if b is not None else None
        for b in self.books.values():
            c = b.find(contract_id)
            if c is not None:
                return c
        return None

    # --- the current contract of a flow ------------------------------------------------------

    def _usable(self, f: Flow, now: float) -> bool:
        """Ends a spent current contract, activates the queued one; True if traffic may pass."""
        while True:
            c = f.current
            if c is not None:
                if c.state in FORWARDING:
                    if c.used >= c.limit_bytes:
                        self._end(f, c, Ev.EXHAUST, "data limit reached", now)
                        continue
                    if now >= c.expires_at:
                        self._end(f, c, Ev.EXPIRE, "time limit reached", now)
                        continue
                    return c.used < c.stop_bytes and now < c.stop_at
                if c.state is State.ACCEPTED:
                    return False           # waiting for payment (no grace)
                f.current = None
                self._flow_changed(f)
            if not f.queue:
                return f.free
            self._activate(f, f.queue.pop(0), now)

    def _activate(self, f: Flow, c: Contract, now: float) -> None:
        f.current = c
        c.activated_at, c.expires_at = now, now + c.time_s
        if self._may_forward(f, c):
            c.apply(Ev.ACTIVATE)
            self._arm(c, f)
        # else: stays ACCEPTED until paid
        self._emit(E.Activated, c, state=c.state.value)
        self._activated(f, c, now)

    def _end(self, f: Flow, c: Contract, ev: Ev, reason: str, now: float) -> None:
        self._ending(f, c, ev, now)
        c.apply(ev)
        c.disarm()
        c.reason = reason
        if f.current is c:
            f.current = None
        elif c in f.queue:
            f.queue.remove(c)
        self._ended(c)
        self._retire(c, now)
        if ev is Ev.REVOKE:
            self.books[c.peer].settle(c)
        self._emit(ENDED_EVENT[ev], c, reason=reason, **self._ended_counts(c))

    def _retire(self, c: Contract, now: float) -> None:
        if c.accepted_at is not None:
            self.durable_seq += 1
        self.books[c.peer].retire(c, now)

    def _close(self, c: Contract, ev: Ev, reason: str, now: float) -> None:
        """A contract that never forwarded (a proposal rejected, withdrawn, refused, or one
        revoked in its queue) goes straight to its tombstone."""
        c.apply(ev)
        c.reason = reason
        self._retire(c, now)

    # --- hooks ----------------------------------------------------------------------------

    def _may_forward(self, f: Flow, c: Contract) -> bool:
        return True

    def _arm(self, c: Contract, f: Flow) -> None:
        c.arm(True)

    def _activated(self, f: Flow, c: Contract, now: float) -> None:
        pass

    def _ending(self, f: Flow, c: Contract, ev: Ev, now: float) -> None:
        pass

    def _ended(self, c: Contract) -> None:
        pass

    def _ended_counts(self, c: Contract) -> dict:
        return {"up": c.up, "down": c.down}

    def _flow_changed(self, f: Flow) -> None:
        pass

    def _emitted(self, ev: E.ContractEvent, c: Contract | None, f: Flow | None) -> None:
        pass

    # --- events ---------------------------------------------------------------------------

    def _emit(self, cls: type[E.ContractEvent], c: Contract | str | None = None, *, f: Flow | None = None,
              counterpart: bytes | None = None, destination: str | None = None, **kw) -> None:
        if isinstance(c, Contract):
            ev = cls(self.SIDE, c.peer, c.contract_id, c.destination, **kw)
            self._emitted(ev, c, f)
        else:
            if f is not None:
                counterpart, destination = f.peer, f.destination
            ev = cls(self.SIDE, counterpart, c, destination, **kw)
            self._emitted(ev, None, f)
        self._events.append(ev)

    def take_events(self) -> list[E.ContractEvent]:
        out, self._events = self._events, []
        return out

    # --- timers -----------------------------------------------------------------------------

    def _at(self, book: Book, when: float, kind: int, obj) -> None:
        if book.at(when, next(self._tn), kind, obj, self._stale) and (book.filed is None or when < book.filed):
            book.filed = when
            f = self._filed
            heapq.heappush(f, (when, next(self._tn), book))
            if len(f) >= self._sweep_at:
                # books re-filed under an earlier deadline leave their old entry behind
                f[:] = [e for e in f if e[2].filed == e[0]]
                heapq.heapify(f)
                self._sweep_at = max(64, 2 * len(f))

    def _stale(self, book: Book, when: float, kind: int, obj) -> bool:
        """A timer that can no longer do anything (its poll would skip it): swept out of a
        book's heap when it grows (Book.at). Each side knows its kinds."""
        return False

    def next_deadline(self) -> float | None:
        """The earliest timer of any book (maybe one since invalidated), or None."""
        f = self._filed
        while f and f[0][2].filed != f[0][0]:
            heapq.heappop(f)           # a book re-filed under another deadline
        return f[0][0] if f else None

    def _due(self, now: float):
        """(book, when, kind, object) of every timer due; timers set meanwhile wait for the
        next call."""
        first_new = next(self._tn)
        filed, again = self._filed, []
        while filed and filed[0][0] <= now:
            when, _, book = heapq.heappop(filed)
            if book.filed != when:
                continue
            book.filed = None
            for w, kind, obj in book.due(now, first_new):
                yield book, w, kind, obj
            again.append(book)
        for book in again:
            nd = book.next_deadline()
            if nd is not None and (book.filed is None or nd < book.filed):
                book.filed = nd
                heapq.heappush(filed, (nd, next(self._tn), book))

    # --- snapshot: the flows' records, shared by both sides --------------------------------

    @staticmethod
    def _flow_record(f: Flow) -> dict | None:
        if f.current is None and not f.queue and f.nodeal_until == 0.0:
            return None
        return {"peer": f.peer.hex(), "key": f.key.hex(), "plen": f.plen, "destination": f.destination,
                "current": f.current.contract_id if f.current else None,
                "queue": [c.contract_id for c in f.queue],
                "nodeal_until": f.nodeal_until, "nodeal_reason": f.nodeal_reason}

    def _restore_flow(self, f: Flow, d: dict, byid: dict[str, Contract]) -> Contract | None:
        """A flow's record back: its current contract (returned, re-armed if it forwards),
        its queue and its no-deal back-off."""
        cur = byid.get(d["current"]) if d["current"] else None
        f.current = cur
        f.queue.extend(byid[i] for i in d["queue"] if i in byid)
        f.nodeal_until, f.nodeal_reason = d["nodeal_until"], d["nodeal_reason"]
        if cur is not None and cur.state in FORWARDING:
            self._arm(cur, f)
        return cur
