"""A relay's money per destination: revenue downstream, cost upstream, the margin between.

Integers in msat.  Revenue is what downstream buyers paid (a contract counts when paid), less
what was credited back for bytes not forwarded (protocol/seller_upstream.py ``Refunded``);
cost is what the relay paid upstream.  ``Resale`` (protocol/resale.py) feeds it from the two
engines' events; the relay's `status` and `history` show ``view()``."""

from __future__ import annotations


class ResaleLedger:
    __slots__ = ("rows",)

    def __init__(self):
        # destination -> [revenue, refunds, cost], msat
        self.rows: dict[str, list[int]] = {}

    def _row(self, destination: str) -> list[int]:
        r = self.rows.get(destination)
        if r is None:
            r = self.rows[destination] = [0, 0, 0]
        return r

    def sold(self, destination: str, msat: int) -> None:
        self._row(destination)[0] += msat

    def refunded(self, destination: str, msat: int) -> None:
        self._row(destination)[1] += msat

    def bought(self, destination: str, msat: int) -> None:
        self._row(destination)[2] += msat

    def view(self) -> dict:
        """{"destinations": {D: {revenue_msat, refunds_msat, cost_msat, margin_msat}}, "total": ...}"""
        out, total = {}, [0, 0, 0]
        for dest, (rev, ref, cost) in sorted(self.rows.items()):
            out[dest] = _money(rev, ref, cost)
            total = [total[0] + rev, total[1] + ref, total[2] + cost]
        return {"destinations": out, "total": _money(*total)}

    def snapshot(self) -> dict:
        return {d: list(r) for d, r in self.rows.items()}

    def restore(self, snap: dict) -> None:
        self.rows = {d: [int(x) for x in r] for d, r in snap.items()}


def _money(rev: int, ref: int, cost: int) -> dict:
    return {"revenue_msat": rev - ref, "refunds_msat": ref, "cost_msat": cost, "margin_msat": rev - ref - cost}
