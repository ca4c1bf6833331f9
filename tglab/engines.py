"""A Seller holding many contracts, built without a network: for the
scale benchmark's micro rows (scale.py) and the unit tests of the engine at
scale. Imports tunnelgate only, nothing of the lab or the benchmarks."""

from __future__ import annotations

import hashlib

PER_PEER = 100          # contracts per fake peer unless told


def dest(j: int) -> bytes:
    """The j-th destination of a peer, in 198.19.0.0/16 (j < 65536)."""
    return bytes((198, 19, (j >> 8) & 255, j & 255))


def _micro_key(i: int) -> bytes:
    return hashlib.blake2s(i.to_bytes(8, "big"), digest_size=32).digest()


class EngineBuilder:
    """A Seller grown to N live contracts (GRACE), per_peer per peer, the way the
    daemon builds them: first packet (held, PROPOSE), ACCEPT from the client."""

    def __init__(self, per_peer: int = PER_PEER, now: float = 1000.0, scope: str | int = "host"):
        from tunnelgate.protocol.seller import Seller, Pricing
        big = 10**8
        self.engine = Seller(Pricing(default_price=500_000, floor_price=500_000, contract_kb=big,
                                            contract_time_s=10**6, grace_time_s=10**6, grace_kb=big,
                                            scope=scope,
                                            # its contracts stay in grace, never paid
                                            max_unpaid_contracts=big))
        # with a prefix scope, one destination per /24 (j.1) so each is its own contract
        self.dst_of = dest if scope == "host" else (lambda j: bytes((198, 19, j & 255, 1)))
        if scope != "host" and per_peer > 256:
            raise ValueError("at most 256 contracts per peer with a prefix scope")
        self.per_peer, self.now = per_peer, now
        self.flows: list[tuple[bytes, bytes]] = []      # (peer, destination), creation order

    def grow(self, total: int) -> "EngineBuilder":
        from tunnelgate.protocol import messages as m
        engine, pkt = self.engine, bytes(60)
        for i in range(len(self.flows), total):
            peer, dst = _micro_key(i // self.per_peer), self.dst_of(i % self.per_peer)
            engine.outbound(peer, dst, len(pkt), pkt, self.now)
            self.flows.append((peer, dst))
            # answered in batches no larger than a peer's open-proposal limit
            if len(engine._out) >= engine.pricing.max_pending_proposals or i == total - 1:
                for p, msg in engine.take_outgoing():
                    if isinstance(msg, m.Propose):
                        engine.on_message(p, m.Accept(msg.contract_id), self.now)
                engine.take_outgoing()
                engine.take_released()
                engine.take_events()
        return self


def build_engine(contracts: int, per_peer: int = PER_PEER):
    """(engine, [(peer, destination)]) with `contracts` live contracts."""
    b = EngineBuilder(per_peer).grow(contracts)
    return b.engine, b.flows
