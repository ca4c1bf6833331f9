"""Per-(peer, destination) metering and the enforcement decision: the hot path.

One dict lookup per level (peer -> destination key -> Flow), no tuple keys, no
logging.  Destination keys are raw address bytes masked to the contract scope
(host scope: the address itself, no allocation; prefix scope: a bounded cache of
masked keys).  The decision is a pure comparison against the current contract's
``stop_bytes`` / ``stop_at`` (set by the engine on every state change), so the
last packet of a contract may overshoot by at most one packet.

``MISS`` tells the engine to take its slow path (negotiate, switch to the queued
contract, hold or drop).
"""

from __future__ import annotations

from tunnelgate.packet import mask

FORWARD, HELD, DROP = 0, 1, 2
MISS = -1
MASK_CACHE_MAX = 65536


class Flow:
    """Traffic of one peer to one destination key (an address or scope prefix).

    Tens of thousands live at a gateway, one per contract's destination, so what most
    flows never need is not allocated per flow: the held packets are the shared empty
    tuple until one is held, the queue is a list (a few contracts at most; an empty
    deque's first block alone is 520 bytes), and the buyer's own fields are in BuyerFlow."""

    __slots__ = ("peer", "key", "plen", "destination", "current", "queue", "free", "free_bytes",
                 "held", "held_bytes", "proposal", "nodeal_until", "nodeal_reason", "list_price",
                 "dropped", "reason")

    def __init__(self, peer: bytes, key: bytes, plen: int, destination: str):
        self.peer, self.key, self.plen, self.destination = peer, key, plen, destination
        self.current = None            # Contract in force (or waiting for payment)
        self.queue: list = []          # accepted contracts that take over when current ends
        self.free = False
        self.free_bytes = 0
        self.held: list[bytes] | tuple = ()    # packets waiting for a contract (seller_hold.py)
        self.held_bytes = 0
        self.proposal = None           # Contract in PROPOSED state, if negotiating
        self.nodeal_until = 0.0
        self.nodeal_reason = ""
        self.list_price = 0
        self.dropped = 0
        self.reason = ""               # last reason shown in status


class BuyerFlow(Flow):
    """A buyer's flow: when it asked for the next contract, and how fast it uses them."""

    __slots__ = ("requested_at", "fast", "rate", "check_at", "asked_kb")

    def __init__(self, peer: bytes, key: bytes, plen: int, destination: str):
        super().__init__(peer, key, plen, destination)
        self.requested_at = None       # when a REQUEST was sent
        self.fast = False              # the last contract was used up within seconds
        self.rate = 0                  # bytes/s over the last contract used up (0: unknown)
        self.check_at = None           # when the buyer's timer looks at this flow next
        self.asked_kb = 0              # the size the last sized REQUEST asked for


class Masker:
    """addr -> key for one prefix length, with a bounded cache."""

    __slots__ = ("plen", "bits", "cache")

    def __init__(self, plen: int, bits: int):
        self.plen, self.bits, self.cache = plen, bits, {}

    def __call__(self, addr: bytes) -> bytes:
        if self.plen >= self.bits:
            return addr
        k = self.cache.get(addr)
        if k is None:
            if len(self.cache) >= MASK_CACHE_MAX:
                self.cache.clear()
            k = self.cache[addr] = mask(addr, self.plen)
        return k


class GatewayMeter:
    """Flows per peer, keyed by the destination masked to the gateway's scope."""

    def __init__(self, plen4: int = 32, plen6: int = 128):
        self.m4, self.m6 = Masker(plen4, 32), Masker(plen6, 128)
        self.peers: dict[bytes, dict[bytes, Flow]] = {}

    def key(self, addr: bytes) -> bytes:
        return self.m4(addr) if len(addr) == 4 else self.m6(addr)

    def plen(self, addr: bytes) -> int:
        return self.m4.plen if len(addr) == 4 else self.m6.plen

    # up() and down() are written out twice on purpose: a shared helper taking the counter's
    # name would cost a call and a getattr per packet on the hottest path.
    def up(self, peer: bytes, dst: bytes, length: int, now: float, whole: bool = False) -> int:
        """whole: a burst of several packets passes only if all of it fits, so a contract
        never overshoots by more than one packet (the caller then meters packet by packet)."""
        flows = self.peers.get(peer)
        if flows is None:
            return MISS
        m = self.m4 if len(dst) == 4 else self.m6
        f = flows.get(dst if m.plen >= m.bits else m(dst))
        if f is None:
            return MISS
        c = f.current
        if c is not None and (c.used + length <= c.stop_bytes if whole else c.used < c.stop_bytes) \
                and now < c.stop_at:
            c.used += length
            c.up += length
            return FORWARD
        if f.free:
            f.free_bytes += length
            return FORWARD
        return MISS

    def down(self, peer: bytes, src: bytes, length: int, now: float, whole: bool = False) -> int:
        """whole: a burst of several packets passes only if all of it fits, so a contract
        never overshoots by more than one packet (the caller then meters packet by packet)."""
        flows = self.peers.get(peer)
        if flows is None:
            return MISS
        m = self.m4 if len(src) == 4 else self.m6
        f = flows.get(src if m.plen >= m.bits else m(src))
        if f is None:
            return MISS
        c = f.current
        if c is not None and (c.used + length <= c.stop_bytes if whole else c.used < c.stop_bytes) \
                and now < c.stop_at:
            c.used += length
            c.down += length
            return FORWARD
        if f.free:
            f.free_bytes += length
            return FORWARD
        return MISS


class ClientMeter:
    """The client learns the gateway's destination prefixes from proposals; lookups try
    each known prefix length, longest first (usually one or two)."""

    def __init__(self):
        self.lens: dict[int, list[tuple[Masker, dict[bytes, Flow]]]] = {4: [], 16: []}

    def table(self, addr_len: int, plen: int) -> dict[bytes, Flow]:
        lst = self.lens[addr_len]
        for m, t in lst:
            if m.plen == plen:
                return t
        t: dict[bytes, Flow] = {}
        lst.append((Masker(plen, addr_len * 8), t))
        lst.sort(key=lambda mt: -mt[0].plen)
        return t

    def find(self, addr: bytes) -> Flow | None:
        for m, t in self.lens[len(addr)]:
            f = t.get(addr if m.plen >= m.bits else m(addr))
            if f is not None:
                return f
        return None


def usage_disagrees(own: int, reported: int, tol_num: int, tol_den: int, slack: int) -> bool:
    """True when |own - reported| exceeds slack + tolerance * max(own, reported) (exact)."""
    diff = abs(own - reported)
    return (diff - slack) * tol_den > tol_num * max(own, reported)
