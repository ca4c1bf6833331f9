"""The seller's holding of packets that wait for a contract, and its bounds per counterpart.

A packet to a destination without a contract is held (bounded per flow, per counterpart and
in total) while a proposal is out; it is released, metered, when the contract starts, and
dropped when no deal comes.  A counterpart with too many open proposals or unpaid contracts
gets no new proposal: its packets to new destinations are dropped and counted, and it hears
how many at most every SUPPRESSED_REPORT_S.  A mixin of ``Seller`` (protocol/seller.py)."""

from __future__ import annotations

from tunnelgate import packet as pk
from tunnelgate.meter import FORWARD, Flow
from tunnelgate.protocol import events as E
from tunnelgate.protocol.contract import Contract
from tunnelgate.protocol.seller_timers import T_SUPPRESSED

# A peer over its open-proposal limit hears once, then at most every this many seconds,
# how many packets to new destinations were dropped (one event, not one per destination).
SUPPRESSED_REPORT_S = 10


class Holding:
    def _hold(self, f: Flow, packet: bytes) -> bool:
        """Keep the packet for when the contract starts, if the bounds allow."""
        b, pr = self.books[f.peer], self.pricing
        n = len(packet)
        if (b.held_packets >= pr.held_max_packets or b.held_bytes + n > pr.held_max_bytes
                or len(f.held) >= pr.held_max_flow_packets
                or self.held_total_bytes + n > pr.held_total_max_bytes):
            b.drops_held += 1
            f.dropped += 1
            return False
        if f.held:
            f.held.append(packet)
        else:
            f.held = [packet]      # (the shared empty tuple until the first: meter.Flow)
        f.held_bytes += n
        b.held_packets += 1
        b.held_bytes += n
        self.held_total_bytes += n
        return True

    def _saturated(self, b) -> bool:
        """Too much is open for this peer to be offered another contract now."""
        return (b.proposals >= self.pricing.max_pending_proposals
                or len(b.unpaid) >= self.pricing.max_unpaid_contracts)

    def _suppress(self, b, now: float) -> None:
        b.drops_proposals += 1
        b.suppressed += 1
        if not b.suppress_timer:       # the first of a burst is told now, the rest by the timer
            self._report_suppressed(b, now)

    def _report_suppressed(self, b, now: float) -> None:
        if not b.suppressed:
            b.suppress_timer = False
            return
        n, b.suppressed = b.suppressed, 0
        pr = self.pricing
        self._emit(E.ProposalsSuppressed, counterpart=b.counterpart,
                   reason=f"{n} packet(s) to new destinations dropped: the peer had "
                          f"{pr.max_pending_proposals} open proposals or {pr.max_unpaid_contracts} "
                          "unpaid contracts (the limits)",
                   dropped=n, open_proposals=b.proposals, unpaid=len(b.unpaid))
        b.suppress_timer = True
        self._at(b, now + SUPPRESSED_REPORT_S, T_SUPPRESSED, b)

    def _set_proposal(self, f: Flow, c: Contract | None) -> None:
        """Every change of f.proposal goes here, so the peer's count of open ones stays true."""
        b = self.books[f.peer]
        b.proposals += (c is not None) - (f.proposal is not None)
        f.proposal = c

    def _release(self, f: Flow, now: float) -> None:
        """Held packets go out now, metered, while the contract allows; the rest are kept."""
        if not f.held:
            return
        held, f.held = f.held, ()
        b = self.books[f.peer]
        b.held_packets -= len(held)
        b.held_bytes -= f.held_bytes
        self.held_total_bytes -= f.held_bytes
        f.held_bytes = 0
        for i, pkt in enumerate(held):
            hdr = pk.dst_and_length(pkt)
            length = hdr[1] if hdr else len(pkt)
            if self.meter.up(f.peer, hdr[0] if hdr else f.key, length, now) == FORWARD:
                self._released.append((f.peer, pkt))
            elif self._usable(f, now) and self.meter.up(f.peer, hdr[0] if hdr else f.key,
                                                         length, now) == FORWARD:
                self._released.append((f.peer, pkt))
            else:                                      # keep the rest held (e.g. grace bytes used)
                f.held = held[i:]
                f.held_bytes = sum(len(rest) for rest in f.held)
                b.held_packets += len(f.held)
                b.held_bytes += f.held_bytes
                self.held_total_bytes += f.held_bytes
                return

    def _drop_held(self, f: Flow, reason: str) -> None:
        if not f.held:
            return
        b = self.books[f.peer]
        n = len(f.held)
        b.held_packets -= n
        b.held_bytes -= f.held_bytes
        self.held_total_bytes -= f.held_bytes
        b.drops_held += n
        f.dropped += n
        f.held, f.held_bytes = (), 0
        self._emit(E.HeldDropped, f=f, reason=reason, packets=n)
