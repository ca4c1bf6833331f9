"""The seller's records for the store: incremental (what changed since the last save) and
whole, and their restore.  A mixin of ``Seller`` (protocol/seller.py); the record formats are
those daemon/store.py keeps (contracts, flows, peers_standing)."""

from __future__ import annotations

from tunnelgate.meter import Flow
from tunnelgate.protocol.contract import FORWARDING, TERMINAL, State

from tunnelgate.protocol.seller_timers import T_GRACE, T_NODEAL, T_PROPOSAL


class SellerStore:
    @staticmethod
    def flow_id(peer_hex: str, key_hex: str) -> str:
        return f"{peer_hex}/{key_hex}"

    @property
    def has_changes(self) -> bool:
        """Records changed since the last snapshot_changes() (the daemon writes them through)."""
        return bool(self._dirty or self._dirty_flows or self._dirty_peers)

    def _live(self):
        for b in self.books.values():
            yield from b.live.values()

    @staticmethod
    def _standing(b) -> dict:
        # the grace a peer used survives a restart: a restart hands out no fresh grace
        return {"no_grace": b.no_grace, "paid_contracts": b.paid_contracts,
                "grace_used": b.grace_used, "grace_from": b.grace_from}

    def snapshot_changes(self, counters: bool = True) -> dict:
        """What changed since the last call (or restore), cheap enough to run under the engine
        lock: full records of the contracts, flows and peers whose state changed, the counters
        (used, up, down) of the running contracts that moved (with ``counters``: the daemon
        batches those, once a second), and the ids of records to delete.  A proposal has a
        record (an ACCEPT that crosses a restart finds it); a contract that was accepted keeps
        its record when it ends (state EXHAUSTED/EXPIRED/REVOKED: a tombstone, so it never
        comes back and the payment journal finds it); a proposal that came to nothing loses
        its record.  ``restore`` takes the saved records back (as a ``snapshot()``)."""
        contracts, removed = [], []
        for c in self._dirty:
            cid = c.contract_id
            b = self.books.get(c.peer)
            if (b is not None and b.live.get(cid) is c) or c.accepted_at is not None:
                contracts.append(c.to_dict())
                c.saved_used = c.used
                self._persisted.add(cid)
            elif cid in self._persisted:
                self._persisted.discard(cid)
                removed.append(cid)
        self._dirty = set()
        counters_out = []
        for mt in (self._metered.values() if counters else ()):
            for cid, c in mt.items():
                if c.used != c.saved_used and cid in self._persisted:
                    counters_out.append((cid, c.used, c.up, c.down))
                    c.saved_used = c.used
        flows, flows_removed = [], []
        for f in self._dirty_flows:
            rec = self._flow_record(f)
            fid = self.flow_id(f.peer.hex(), f.key.hex())
            if rec is not None:
                flows.append((fid, rec))
                self._saved_flows.add(f)
            elif f in self._saved_flows:
                self._saved_flows.discard(f)
                flows_removed.append(fid)
        self._dirty_flows = set()
        peers = {}
        for k in self._dirty_peers:
            b = self.books.get(k)
            if b is not None:
                peers[k.hex()] = self._standing(b)
        self._dirty_peers = set()
        if self._retry_removed[0] or self._retry_removed[1]:
            (rc, rf), self._retry_removed = self._retry_removed, ([], [])
            removed = [i for i in rc if i not in self._persisted] + removed
            flows_removed = rf + flows_removed
        return {"version": 2, "seq": self._seq, "contracts": contracts, "counters": counters_out,
                "removed": removed, "flows": flows, "flows_removed": flows_removed, "peers": peers}

    def save_failed(self, changes: dict) -> None:
        """The store did not take ``changes``: the next snapshot_changes() has everything."""
        self._retry_removed = (self._retry_removed[0] + changes["removed"],
                               self._retry_removed[1] + changes["flows_removed"])
        self.mark_all_dirty()

    def mark_all_dirty(self) -> None:
        """The next snapshot_changes() has every record (a first save, or after a failed one)."""
        live = list(self._live())
        self._dirty.update(live)
        # ended ones too: a tombstone lost with a failed save must not leave the contract live
        self._dirty.update(c for c in self.tombstones.contracts() if c.accepted_at is not None)
        self._persisted.update(c.contract_id for c in live)      # old records of gone contracts: deleted
        for b in self.books.values():
            self._dirty_flows.update(b.flows.values())
        self._saved_flows.update(self._dirty_flows)
        self._dirty_peers.update(self.books)

    def snapshot(self) -> dict:
        """JSON-able state: live contracts (not proposals), metered bytes, peer standing,
        no-deal back-offs.  Persist at least every second and on stop (or incrementally:
        snapshot_changes)."""
        flows = [rec for b in self.books.values() for f in b.flows.values()
                 if (rec := self._flow_record(f)) is not None]
        return {"version": 1, "seq": self._seq,
                "contracts": [c.to_dict() for c in self._live()]
                + [c.to_dict() for c in self.tombstones.contracts() if c.accepted_at is not None],
                "flows": flows,
                "peers": {k.hex(): self._standing(b) for k, b in self.books.items()}}

    def restore(self, snap: dict, now: float) -> None:
        """Resume from ``snapshot()`` (or the records snapshot_changes wrote); contracts whose
        time ran out meanwhile end at the next poll/packet.  Bytes metered after the last save
        of the counters are lost (in the client's favour); state changes were written through,
        so an ended contract stays ended, a proposal can still be accepted, and an ended one
        still owing its payment takes it within its grace."""
        self._seq = snap["seq"]
        for k, d in snap["peers"].items():
            b = self._book(bytes.fromhex(k))
            b.no_grace, b.paid_contracts = d["no_grace"], d["paid_contracts"]
            b.grace_used, b.grace_from = d.get("grace_used", 0), d.get("grace_from")
        byid = {}
        ended = []
        for d in snap["contracts"]:
            c = self.CONTRACT.from_dict(d)
            c.saved_used = c.used
            self._persisted.add(c.contract_id)
            if c.state in TERMINAL:
                ended.append(c)
                continue
            byid[c.contract_id] = c
            self._book(c.peer).add(c)
        ended.sort(key=lambda c: c.ended_at or 0.0)
        for c in ended[-self.tombstones.cap:]:
            b = self._book(c.peer)
            self.tombstones.add(b, c)
            if not c.paid and c.state is not State.REVOKED and c.grace_until is not None:
                b.owe(c)
                self._at(b, c.grace_until, T_GRACE, c)
        for c in byid.values():
            if c.state is State.PROPOSED:
                f = self._flow(c.peer, c.key, now)
                if f.proposal is None or f.proposal.created_at < c.created_at:
                    f.proposal = c
                self._at(self.books[c.peer], c.created_at + self.pricing.proposal_timeout_s, T_PROPOSAL, c)
        for d in snap["flows"]:
            peer, key = bytes.fromhex(d["peer"]), bytes.fromhex(d["key"])
            f = self._flow(peer, key, now)
            self._saved_flows.add(f)
            cur = self._restore_flow(f, d, byid)
            if f.nodeal_until:
                self._nodeal.add(f)
                self._at(self.books[peer], f.nodeal_until, T_NODEAL, f)
            if cur is not None:
                self._sched(f, cur, now)
        placed = set()
        for b in self.books.values():
            for f in b.flows.values():
                placed.update(id(c) for c in f.queue)
                if f.current is not None:
                    placed.add(id(f.current))
        for c in sorted(byid.values(), key=lambda c: c.accepted_at or 0.0):
            if c.accepted_at is None or id(c) in placed:
                continue
            # accepted but in no flow (a record older than its flow's): queue it, so every
            # contract paid for is served
            f = self._flow(c.peer, c.key, now)
            if f.current is None and c.activated_at is not None:
                f.current = c
                if c.state in FORWARDING:
                    self._arm(c, f)
                self._sched(f, c, now)
            else:
                f.queue.append(c)
            self._dirty_flows.add(f)
        for c in byid.values():
            if c.grace_until is not None and not c.paid:
                b = self.books[c.peer]
                self._at(b, c.grace_until, T_GRACE, c)
                b.owe(c)

    def _flow_changed(self, f: Flow) -> None:
        self._dirty_flows.add(f)
