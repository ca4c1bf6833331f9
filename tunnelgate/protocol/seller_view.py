"""What the seller shows: its contracts, each counterpart's standing, why traffic is (not)
forwarded.  A mixin of ``Seller`` (protocol/seller.py)."""

from __future__ import annotations

from tunnelgate import packet as pk
from tunnelgate.money import BYTES_PER_KB
from tunnelgate.protocol.contract import Contract


class SellerView:
    def contract_list(self, peer: bytes | None = None, history: bool = False) -> list[Contract]:
        """The live contracts (with `history` also the ended ones this run
        remembers), copied. Cheap enough to take under the daemon's engine lock,
        so that the views, O(contracts), are built outside it: the data path
        meters under that lock (10,000 contracts' views take ≈ 17 ms)."""
        if peer is not None:
            b = self.books.get(peer)
            if b is None:
                return []
            return list(b.live.values()) + ([c for c in self.tombstones.contracts() if c.peer == peer]
                                            if history else [])
        cs = [c for b in self.books.values() for c in b.live.values()]
        return cs + list(self.tombstones.contracts()) if history else cs

    def contracts(self, peer: bytes | None = None, now: float = 0.0, history: bool = False) -> list[dict]:
        return [c.view(now) for c in self.contract_list(peer, history)]

    def status_snapshot(self) -> tuple[list, list[Contract], object]:
        """What status() reads, copied (see contract_list): peers with their
        flows, the live contracts and the strangers' grace budget."""
        return ([(peer, b, list(b.flows.values())) for peer, b in self.books.items()], self.contract_list(),
                self.strangers.copy())

    def status(self, now: float, snapshot: tuple[list, list[Contract], object] | None = None) -> dict:
        """Peers' standing and the live contracts' views, from `snapshot`
        (status_snapshot(), taken under the engine lock) or from the engine."""
        peer_flows, contracts, strangers = snapshot if snapshot is not None else self.status_snapshot()
        peers = {}
        for peer, b, flows in peer_flows:
            peers[peer.hex()] = {
                "grace": not b.no_grace, "paid_contracts": b.paid_contracts,
                "grace_used_kb": b.grace_used // BYTES_PER_KB,
                "credit_msat": self.credit.balance(peer), "credit_contracts": b.credit_contracts,
                "no_account": b.no_account,
                "held_packets": b.held_packets, "held_bytes": b.held_bytes,
                "drops_held": b.drops_held, "drops_no_deal": b.drops_no_deal,
                "open_proposals": b.proposals, "unpaid_contracts": len(b.unpaid),
                "drops_proposal_limit": b.drops_proposals,
                "drops_inbound_no_contract": b.drops_no_contract_in,
                "no_deal": {f.destination: {"reason": f.nodeal_reason,
                                            "retry_in_s": max(0, int(f.nodeal_until - now))}
                            for f in flows if f.nodeal_until > now},
                "free_bytes": sum(f.free_bytes for f in flows),
            }
        return {"peers": peers, "contracts": [c.view(now) for c in contracts],
                "grace": self.grace_status(now, contracts, strangers)}

    def why(self, peer: bytes, dst: bytes | str, now: float) -> str:
        """Why traffic from peer to dst is (not) forwarded, for `status`."""
        dst = pk.addr_bytes(dst)
        f = self.meter.peers.get(peer, {}).get(self.meter.key(dst))
        if f is None:
            return "no contract yet"
        if f.free:
            return "free destination"
        if f.nodeal_until > now:
            return f"no deal: {f.nodeal_reason} (retry in {int(f.nodeal_until - now)} s)"
        c = f.current
        if c is None:
            return "negotiating" if f.proposal else "no contract"
        return f"contract {c.contract_id} {c.state.value}"
