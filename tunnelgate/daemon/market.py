"""Glue shared by both daemons around the sans-IO contract engines: the
control channel per peer, the event log, and saving the engine's state.

The engine is called from the data-path threads (per packet) and from the
asyncio thread (messages, timers), so every call goes through `lock`.
"""

from __future__ import annotations

import base64
import heapq
import json
import logging
import os
import threading
import time
from collections import Counter, deque

from ..protocol import messages as msgs
from ..protocol.channel import Channel, ChannelFull
from ..protocol.events import SELLER, ContractEvent
from .lograte import LogLimiter
from .store import EVENTS_MAX, Store

log = logging.getLogger("tunnelgate.contracts")

SAVE_EVERY_S = 1.0
EVENTS_KEPT = 500


def peer_text(peer: bytes | None) -> str | None:
    return base64.b64encode(peer).decode() if peer else None


class SideTap:
    """An EventLog subscriber that marks each event with the side of the daemon it came from
    (a relay's "downstream" or "upstream") and passes it to a queue several logs share."""

    __slots__ = ("queue", "side")

    def __init__(self, queue, side: str) -> None:
        self.queue, self.side = queue, side

    def full(self) -> bool:
        return self.queue.full()

    def put_nowait(self, rec: dict) -> None:
        self.queue.put_nowait({**rec, "side": self.side})


class EventLog:
    """Contract events: logged, kept in memory for `status`/`events`, stored in SQLite."""

    def __init__(self, store: Store):
        self.store = store
        self.recent: deque[dict] = deque(maxlen=EVENTS_KEPT)
        self.counts: Counter[str] = Counter()  # per kind since start: metrics' counters never go down
        # rows not yet written; if the store falls behind, the oldest go (the table keeps
        # only the newest EVENTS_MAX anyway)
        self._pending: deque[tuple] = deque(maxlen=EVENTS_MAX)
        self.subscribers: set = set()
        self.limiter = LogLimiter()        # log lines per (kind, peer)

    def add(self, ev: ContractEvent, extra: dict | None = None) -> dict:
        """The one place a typed engine event becomes the record the log, `status --json`,
        `events` and the TUI show, as before events were typed: the kind's own fields are its
        ``data`` (lists for tuples, as JSON has them); ``peer`` is the counterpart of a seller's
        event (a buyer's named none while it had one gateway)."""
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in ev.extras().items()
                if k != "proof"}                           # proofs are bearer secrets
        if extra:
            data.update(extra)
        rec = {"ts": time.time(), "kind": ev.kind, "contract_id": ev.contract_id,
               "peer": peer_text(ev.counterpart) if ev.side == SELLER else None,
               "destination": ev.destination, "reason": ev.reason, "amount_msat": ev.amount_msat,
               "data": data}
        self.note(rec)
        return rec

    def say(self, kind: str, reason: str = "", contract_id: str | None = None, destination: str | None = None,
            amount_msat: int = 0, data: dict | None = None) -> None:
        """An event of the daemon's own (a setting, a wallet warning), not of the engine."""
        self.note({"ts": time.time(), "kind": kind, "contract_id": contract_id, "peer": None,
                   "destination": destination, "reason": reason, "amount_msat": amount_msat,
                   "data": data or {}})

    def note(self, rec: dict) -> None:
        self.recent.append(rec)
        self.counts[rec["kind"]] += 1
        self._pending.append((rec["ts"], rec["kind"], rec["contract_id"], rec["peer"], rec["destination"],
                              rec["reason"], rec["amount_msat"], json.dumps(rec["data"])))
        level = logging.WARNING if rec["kind"] in ("revoked", "payment_failed", "usage_mismatch",
                                                  "budget_exceeded", "protocol_violation",
                                                  "warning") else logging.INFO
        if log.isEnabledFor(level):
            self.limiter.log(log, level, (rec["kind"], rec["peer"]), rec["ts"], "%s %s%s%s%s",
                             rec["kind"], rec["contract_id"] or "",
                             f" {rec['destination']}" if rec["destination"] else "",
                             f" {rec['amount_msat']} msat" if rec["amount_msat"] else "",
                             f": {rec['reason']}" if rec["reason"] else "")
        for q in list(self.subscribers):
            if not q.full():  # a subscriber that stopped reading misses events, never blocks us
                q.put_nowait(rec)

    def flush(self) -> None:
        if self._pending:
            rows = list(self._pending)
            self._pending.clear()
            self.store.add_events(rows)
        for (kind, peer), n in self.limiter.drain(time.time()):
            log.info("%s: %d more event(s)%s not logged (all are in `tunnelgate events`)",
                     kind, n, f" of {peer}" if peer else "")

    def take_pending(self) -> list[tuple]:
        """The rows not yet stored, to write with the engine's records (Saver.write)."""
        rows, self._pending = self._pending, []
        return rows

    def put_back(self, rows: list[tuple]) -> None:
        self._pending[:0] = rows


class Channels:
    """One reliable control channel per peer; frames go out through `send_frame(peer, frame)`.

    ``flush`` polls only the channels that may have something to send: those given a
    message or a frame since the last flush, and those whose retransmission deadline
    passed (a heap of (deadline, peer), stale entries skipped)."""

    def __init__(self, send_frame):
        self.send_frame = send_frame
        self.by_peer: dict[bytes, Channel] = {}
        self.stats = {"bad_messages": 0, "queue_full": 0}
        self.limiter = LogLimiter()
        self._active: set[bytes] = set()
        self._deadlines: list[tuple[float, bytes]] = []
        self._next: dict[bytes, float] = {}      # peer -> its deadline in the heap

    def get(self, peer: bytes) -> Channel:
        ch = self.by_peer.get(peer)
        if ch is None:
            # a fresh epoch per daemon run, so a restarted peer's channel starts clean
            ch = self.by_peer[peer] = Channel(int.from_bytes(os.urandom(8), "big"))
        return ch

    def send(self, peer: bytes, message: msgs.Message) -> None:
        self._active.add(peer)
        try:
            self.get(peer).send(msgs.encode(message))
        except ChannelFull:
            self.stats["queue_full"] += 1
            self.limiter.log(log, logging.WARNING, peer, time.monotonic(),
                             "control channel to %s is full; dropped %s", peer_text(peer), message.TYPE)

    def receive(self, peer: bytes, frame: bytes, now: float) -> list[msgs.Message]:
        out = []
        self._active.add(peer)
        for raw in self.get(peer).receive(frame, now):
            try:
                out.append(msgs.decode(raw))
            except msgs.ProtocolError as e:
                self.stats["bad_messages"] += 1
                log.debug("bad control message from %s: %s", peer_text(peer), e)
        return out

    def next_deadline(self) -> float | None:
        """When flush() has something to do: now (0.0) if a channel was given a message or
        a frame since the last flush, else the earliest retransmission (may be a stale
        entry's, earlier than needed: flush drops those)."""
        if self._active:
            return 0.0
        return self._deadlines[0][0] if self._deadlines else None

    def flush(self, now: float) -> None:
        due, self._active = self._active, set()
        h, nxt = self._deadlines, self._next
        while h and h[0][0] <= now:
            when, peer = heapq.heappop(h)
            if nxt.get(peer) == when:
                del nxt[peer]
                due.add(peer)
        for peer in due:
            ch = self.by_peer.get(peer)
            if ch is None:
                continue
            for frame in ch.poll(now):
                self.send_frame(peer, frame)
            d = ch.next_deadline()
            if d is None:
                continue
            if d <= now:                    # e.g. more queued than the window: next flush
                self._active.add(peer)
                continue
            cur = nxt.get(peer)
            if cur is None or d < cur:
                nxt[peer] = d
                heapq.heappush(h, (d, peer))


class Saver:
    """Saves the engine's state at most every SAVE_EVERY_S and on stop.

    An engine with ``snapshot_changes()`` (the gateway: thousands of contracts) is saved
    incrementally, one row per contract / flow / peer, only what changed (taken under the
    lock: a few dicts and the counters that moved; JSON and SQLite outside it).  A database
    with the older single-blob snapshot is loaded from it once and rewritten as rows.  Others
    (the client: one gateway, a handful of contracts) keep the single JSON blob."""

    def __init__(self, store: Store, engine, lock: threading.Lock, name: str = "engine"):
        self.store, self.engine, self.lock, self.name = store, engine, lock, name
        self.last = 0.0
        self.incremental = hasattr(engine, "snapshot_changes")
        self._migrate = False
        self.stats = {"saves": 0, "records": 0, "write_through": 0, "write_through_s": 0.0,
                      "write_errors": 0}
        # Held from taking changes (under the engine lock) until they are written, so two
        # threads' writes land in the order their changes were made. Taken before the engine
        # lock, never after it.
        self.wlock = threading.RLock()
        self.written_seq = 0        # engine.durable_seq as of the last write

    # --- write-through: state changes that matter for money, before they take effect ------

    def take(self):
        """Under the engine lock (and wlock): the records that changed, counters left to the
        batched save (the client's whole snapshot: it is a handful of contracts)."""
        self._seq_taken = self.engine.durable_seq
        if self.incremental:
            return self.engine.snapshot_changes(counters=False)
        return self.engine.snapshot()

    def write(self, taken, events: EventLog | None = None) -> None:
        """Under wlock, not the engine lock: write what ``take`` returned, with the events
        noted so far (asyncio thread only: the EventLog is not shared with the data path)."""
        rows = events.take_pending() if events is not None else []
        t0 = time.perf_counter()
        try:
            if self.incremental:
                self.store.save_changes(self.name, taken, drop_snapshot=self._migrate, events=rows)
                self._migrate = False
            else:
                self.store.save_snapshot_with_events(self.name, json.dumps(taken), rows)
        except Exception:
            self.stats["write_errors"] += 1
            if events is not None:
                events.put_back(rows)
            if self.incremental:
                with self.lock:
                    self.engine.save_failed(taken)
            raise
        self.stats["write_through"] += 1
        self.stats["write_through_s"] += time.perf_counter() - t0
        self.written_seq = self._seq_taken

    def write_through(self) -> None:
        """Take and write the changed records now (any thread that holds no engine lock)."""
        with self.wlock:
            with self.lock:
                taken = self.take()
            self.write(taken)

    def restore(self, now: float) -> bool:
        raw = self.store.load_snapshot(self.name)
        if self.incremental:
            if raw is not None:         # an older database: the blob, then rows from it
                with self.lock:
                    self.engine.restore(json.loads(raw), now)
                    self.engine.mark_all_dirty()
                self._migrate = True
                return True
            # the newest ended records: as many as the engine keeps (tombstones), not all ever
            snap = self.store.load_records(self.name, ended_keep=self.engine.tombstones.cap)
            if snap is None:
                return False
            with self.lock:
                self.engine.restore(snap, now)
            return True
        if raw is None:
            return False
        with self.lock:
            self.engine.restore(json.loads(raw), now)
        return True

    def maybe_save(self, now: float, force: bool = False) -> None:
        if not (force or now - self.last >= SAVE_EVERY_S):
            return
        with self.wlock:
            self._save(now)

    def _save(self, now: float) -> None:
        if self.incremental:
            with self.lock:
                seq = self.engine.durable_seq
                ch = self.engine.snapshot_changes()
            try:
                self.store.save_changes(self.name, ch, drop_snapshot=self._migrate)
            except Exception:
                with self.lock:         # nothing of it was written: all of it next time
                    self.engine.save_failed(ch)
                raise
            self._migrate = False
            self.stats["saves"] += 1
            self.stats["records"] += len(ch["contracts"]) + len(ch["counters"]) + len(ch["flows"])
        else:
            with self.lock:
                seq = self.engine.durable_seq
                snap = self.engine.snapshot()
            self.store.save_snapshot(self.name, json.dumps(snap))
        self.written_seq = seq
        self.last = now
