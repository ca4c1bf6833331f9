"""A seller's record of its counterparts' prepaid credit, in memory (see MemoryCredit)."""

from __future__ import annotations


class MemoryCredit:
    """Prepaid credit per peer, in memory (tests; the daemon keeps it in the payment journal).

    The engine calls ``balance(peer)`` (status) and ``spend(peer, msat, contract_id)`` at an
    ACCEPT that asks to be paid from credit: the remaining balance, or None (not enough; nothing
    taken).  Spending twice for the same contract takes once."""

    def __init__(self, balances: dict[bytes, int] | None = None):
        self.balances: dict[bytes, int] = dict(balances or {})
        self.spent: dict[str, int] = {}

    def balance(self, peer: bytes) -> int:
        return self.balances.get(peer, 0)

    def spend(self, peer: bytes, msat: int, contract_id: str) -> int | None:
        if contract_id in self.spent:
            return self.balance(peer)
        have = self.balance(peer)
        if have < msat:
            return None
        self.balances[peer] = have - msat
        self.spent[contract_id] = msat
        return self.balances[peer]

    def add(self, peer: bytes, msat: int) -> int:
        self.balances[peer] = self.balance(peer) + msat
        return self.balances[peer]
