"""Choosing a gateway per destination: score, hysteresis, and each gateway's record.

Order of preference, as a buyer would rank sellers: a gateway that took money
and did not deliver goes last whatever its price; then price for the
destination; then quality (round-trip time, loss). A destination moves from
the gateway that carries it only when that one is down or dishonest, or when
another is cheaper by more than ``switch_margin`` -- so tied or nearly tied
prices never make it flap. Sans-IO: callers pass ``now``; decisions come back
as values with a reason a user can read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_SWITCH_MARGIN = 0.20
# a usage report may trail the buyer's own count by what is in flight; beyond this it is a disagreement
USAGE_TOLERANCE = 0.05
USAGE_SLACK_BYTES = 64_000


@dataclass
class Record:
    """What one gateway did with this client's money, kept across restarts."""
    bought: int = 0              # contracts accepted
    paid: int = 0                # contracts paid
    delivered: int = 0           # paid contracts that carried traffic after the payment
    disagreements: int = 0       # usage reports beyond tolerance of our own count
    unserved: int = 0            # payments made with no service after them
    failed_handshakes: int = 0

    def verdict(self) -> str | None:
        """Why this gateway should go last, or None."""
        if self.unserved:
            return f"took {self.unserved} payment(s) and delivered nothing after them"
        if self.disagreements >= 3 and self.disagreements * 2 > max(self.paid, 1):
            return f"its usage reports disagreed with ours {self.disagreements} times"
        return None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def usage_disagrees(reported: int, counted: int) -> bool:
    """A gateway's usage report against the buyer's own byte count for one contract."""
    return reported > counted + max(USAGE_SLACK_BYTES, int(counted * USAGE_TOLERANCE))


@dataclass(frozen=True)
class Offer:
    """One gateway's standing for one destination, as the chooser sees it."""
    gateway: bytes               # Noise public key
    price: int | None            # price units per KB for this destination; None: no quote (yet)
    up: bool                     # handshake done and answering
    rtt_ms: float | None = None
    loss: float = 0.0            # 0..1 over the recent probes
    record: Record = field(default_factory=Record)
    refusal: str = ""            # why it said no deal for this destination (price None then)

    def rank(self) -> tuple:
        """Lower is better. Quality: RTT with loss counted as retransmission time."""
        rtt = self.rtt_ms if self.rtt_ms is not None else 1e6
        quality = rtt * (1.0 + 4.0 * min(max(self.loss, 0.0), 1.0))
        return (self.record.verdict() is not None, self.price if self.price is not None else 1 << 62,
                quality, self.gateway)

    def usable(self) -> bool:
        return self.up and self.price is not None


@dataclass(frozen=True)
class Decision:
    dest: str
    gateway: bytes | None        # None: no gateway can carry it now
    previous: bytes | None
    reason: str                  # why it moved (or why it stayed without a gateway)

    @property
    def moved(self) -> bool:
        return self.gateway != self.previous


class Chooser:
    """The current gateway of each destination, and the rule to move it."""

    def __init__(self, switch_margin: float = DEFAULT_SWITCH_MARGIN, max_price: int | None = None) -> None:
        if not 0.0 <= switch_margin < 1.0:
            raise ValueError("switch_margin is a fraction in [0, 1)")
        self.switch_margin = switch_margin
        self.max_price = max_price
        self.current: dict[str, bytes] = {}

    def _affordable(self, o: Offer) -> bool:
        return o.usable() and (self.max_price is None or o.price <= self.max_price)

    def choose(self, dest: str, offers: list[Offer]) -> Decision:
        """Where ``dest`` goes now. Only a changed gateway is a move; ``reason`` says why."""
        prev = self.current.get(dest)
        good = sorted((o for o in offers if self._affordable(o)), key=Offer.rank)
        if not good:
            self.current.pop(dest, None)
            why = "no gateway up with a price within max_price" if offers else "no gateway known"
            return Decision(dest, None, prev, why)
        best = good[0]
        cur = next((o for o in offers if o.gateway == prev), None)
        if cur is not None and best.gateway != prev:
            if not cur.up:
                reason = "its gateway stopped answering"
            elif cur.record.verdict() is not None:
                reason = f"its gateway {cur.record.verdict()}"
            elif not self._affordable(cur):
                reason = ("its gateway's price rose above max_price" if cur.price is not None
                          else f"its gateway said no deal: {cur.refusal}" if cur.refusal
                          else "its gateway withdrew its quote")
            elif best.record.verdict() is None and best.price <= cur.price * (1.0 - self.switch_margin):
                reason = f"another gateway is cheaper by more than {self.switch_margin:.0%} ({best.price} < {cur.price})"
            else:
                return Decision(dest, prev, prev, "kept: no other gateway better by the switch margin")
            self.current[dest] = best.gateway
            return Decision(dest, best.gateway, prev, reason)
        self.current[dest] = best.gateway
        if prev is None:
            return Decision(dest, best.gateway, None, "first choice: best price, then quality, then record")
        if best.gateway == prev:
            return Decision(dest, prev, prev, "kept")
        return Decision(dest, best.gateway, prev, "its gateway is gone")

    def forget(self, gateway: bytes) -> list[str]:
        """Destinations that were on ``gateway`` (to re-choose after it failed)."""
        gone = [d for d, g in self.current.items() if g == gateway]
        for d in gone:
            del self.current[d]
        return gone

    def carried_by(self, gateway: bytes) -> list[str]:
        return sorted(d for d, g in self.current.items() if g == gateway)
