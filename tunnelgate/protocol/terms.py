"""The agreed terms of one contract: what the seller proposed and the buyer accepted.

Immutable and the same on both sides; each side keeps its own mutable state (lifecycle,
counters, bookkeeping) in a ``Contract`` that points here (protocol/contract.py)."""

from __future__ import annotations

from dataclasses import dataclass

from tunnelgate.money import BYTES_PER_KB, cost_msat


@dataclass(frozen=True, slots=True)
class Terms:
    contract_id: str
    destination: str          # prefix text, e.g. "198.18.2.7/32"
    key: bytes                # the destination's masked address
    plen: int
    price: int                # price units (micro-msat per KB, see money.py)
    limit_kb: int
    time_s: int
    methods: tuple[str, ...] = ()
    account: str = ""
    round: int = 1
    grace_s: int = 0
    grace_kb: int = 0
    # the cost chain (protocol/chain.py): (public key, price) per hop, this contract's seller
    # last; () for a contract from before chains
    chain: tuple[tuple[bytes, int], ...] = ()

    @property
    def limit_bytes(self) -> int:
        return self.limit_kb * BYTES_PER_KB

    @property
    def cost_msat(self) -> int:
        return cost_msat(self.price, self.limit_kb)
