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
from collections import deque

from ..protocol import messages as msgs
from ..protocol.channel import Channel, ChannelFull
from ..protocol.contract import Event
from .store import Store

log = logging.getLogger("tunnelgate.contracts")

SAVE_EVERY_S = 1.0
EVENTS_KEPT = 500


def peer_text(peer: bytes | None) -> str | None:
    return base64.b64encode(peer).decode() if peer else None


class EventLog:
    """Contract events: logged, kept in memory for `status`/`events`, stored in SQLite."""

    def __init__(self, store: Store):
        self.store = store
        self.recent: deque[dict] = deque(maxlen=EVENTS_KEPT)
        self._pending: list[tuple] = []
        self.subscribers: set = set()

    def add(self, ev: Event, extra: dict | None = None) -> dict:
        data = {k: v for k, v in (ev.data or {}).items() if k != "proof"}  # proofs are bearer secrets
        if extra:
            data.update(extra)
        rec = {"ts": time.time(), "kind": ev.kind, "contract_id": ev.contract_id, "peer": peer_text(ev.peer),
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
        self._pending.append((rec["ts"], rec["kind"], rec["contract_id"], rec["peer"], rec["destination"],
                              rec["reason"], rec["amount_msat"], json.dumps(rec["data"])))
        level = logging.WARNING if rec["kind"] in ("revoked", "payment_failed", "usage_mismatch",
                                                  "budget_exceeded", "protocol_violation",
                                                  "warning") else logging.INFO
        log.log(level, "%s %s%s%s%s", rec["kind"], rec["contract_id"] or "",
                f" {rec['destination']}" if rec["destination"] else "",
                f" {rec['amount_msat']} msat" if rec["amount_msat"] else "",
                f": {rec['reason']}" if rec["reason"] else "")
        for q in list(self.subscribers):
            if not q.full():  # a subscriber that stopped reading misses events, never blocks us
                q.put_nowait(rec)

    def flush(self) -> None:
        if self._pending:
            rows, self._pending = self._pending, []
            self.store.add_events(rows)


class Channels:
    """One reliable control channel per peer; frames go out through `send_frame(peer, frame)`.

    ``flush`` polls only the channels that may have something to send: those given a
    message or a frame since the last flush, and those whose retransmission deadline
    passed (a heap of (deadline, peer), stale entries skipped)."""

    def __init__(self, send_frame):
        self.send_frame = send_frame
        self.by_peer: dict[bytes, Channel] = {}
        self.stats = {"bad_messages": 0, "queue_full": 0}
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
            log.warning("control channel to %s is full; dropped %s", peer_text(peer), message.TYPE)

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
        self.stats = {"saves": 0, "records": 0}

    def restore(self, now: float) -> bool:
        raw = self.store.load_snapshot(self.name)
        if self.incremental:
            if raw is not None:         # an older database: the blob, then rows from it
                with self.lock:
                    self.engine.restore(json.loads(raw), now)
                    self.engine.mark_all_dirty()
                self._migrate = True
                return True
            snap = self.store.load_records(self.name)
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
        if self.incremental:
            with self.lock:
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
                snap = self.engine.snapshot()
            self.store.save_snapshot(self.name, json.dumps(snap))
        self.last = now
