"""Where a gateway's memory goes, per peer and per contract, without a network.

    .venv/bin/python -m tglab.memory [--peers 100] [--contracts 10000] [--top 25]

Builds, in this process, what `tunnelgate serve` holds for N peers and M contracts, the
way the daemon builds it: a Responder with N completed handshakes (and the first
datagram on each new key), a BuyerLink, address lease and control channel per peer;
a Seller whose contracts go first packet -> PROPOSE -> ACCEPT -> PAY -> PAID through
the channels (the peers' side acknowledges), their events through the EventLog, their
records through the Saver into SQLite. Then it prints the Python allocations
(tracemalloc) per peer and per contract, by the line that made them, and the process's
RSS growth over the same steps (which also counts what tracemalloc does not see:
OpenSSL contexts, SQLite's page cache, malloc's overhead).

The first peer and first 10 % of contracts are made before the counting starts, so
one-time costs (code paths run once, caches warming) are not counted per item. A
measuring tool, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import sys
import tempfile
import threading
import tracemalloc
from pathlib import Path


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Gateway:
    """The gateway's per-peer and per-contract state, driven as the daemon drives it."""

    def __init__(self, work: Path):
        from tunnelgate import keys, session
        from tunnelgate.daemon.leases import Leases
        from tunnelgate.daemon.links import Links
        from tunnelgate.daemon.market import Channels, EventLog, Saver
        from tunnelgate.daemon.store import Store
        from tunnelgate.protocol.seller import Pricing, Seller
        big = 10**8
        self.session = session
        self.private = keys.generate()
        self.public = session.public_key(self.private)
        self.store = Store(work / "state.db")
        self.responder = session.Responder(self.private, session.Timing(), lock=threading.Lock())
        self.links = Links()
        self.leases = Leases(self.store, ipaddress.IPv4Interface("100.64.0.1/16"), 3600)
        self.engine = Seller(Pricing(default_price=500_000, floor_price=500_000, contract_kb=big,
                                     contract_time_s=3600, grace_time_s=600, grace_kb=big,
                                     payment_methods=("dummy",), account="dummy-account"),
                             new_id=lambda: os.urandom(8).hex())
        self.lock = threading.Lock()
        self.events = EventLog(self.store)
        self.saver = Saver(self.store, self.engine, self.lock)
        self.clients: dict[bytes, "Client"] = {}
        self.channels = Channels(self._to_client)
        self.now = 1_000_000.0

    # --- peers -----------------------------------------------------------------------------

    def add_peers(self, n: int, counted) -> None:
        """n peers handshake, as the daemon's handshake worker answers them; `counted(step)`
        runs the gateway's steps (the peers' own work is not the gateway's memory)."""
        import base64
        import json
        from tunnelgate import keys
        from tunnelgate.daemon.links import BuyerLink
        s = self.session
        base = len(self.clients)
        new = [Client(keys.generate(), self) for _ in range(n)]
        inits = [c.init.begin(self.now, 1_000_000_000 * (base + i) + 1, os.urandom(s.RAND_BYTES))
                 for i, c in enumerate(new)]
        resps = []

        def accept() -> None:
            for i, (c, init) in enumerate(zip(new, inits)):
                hs = self.responder.receive(init, self.now, ("198.18.0.2", 40000 + base + i))
                key_b64 = base64.b64encode(hs.peer_public).decode()
                addr, _ = self.leases.acquire(key_b64, self.now, hs.timestamp, set)
                payload = json.dumps({"address": f"{addr}/16", "gateway": "100.64.0.1"}).encode()
                with self.lock:
                    resps.append((hs.addr, self.responder.accept(hs, self.now, os.urandom(s.RAND_BYTES),
                                                                 payload)))
                link = BuyerLink(hs.peer_public, self.responder, ipaddress.IPv4Address(addr).packed, None)
                self.links.add(link)
                link.channel = self.channels.get(hs.peer_public)
                c.public = hs.peer_public
                self.clients[hs.peer_public] = c

        counted(accept)
        # the first datagram on the new keys confirms them at the gateway
        firsts = []
        for c, (addr, resp) in zip(new, resps):
            c.init.receive(resp, self.now)
            firsts.append((addr, c.init.seal(s.KEEPALIVE, b"", self.now)))
        counted(lambda: [self.responder.receive(d, self.now, addr) for addr, d in firsts])

    # --- contracts ---------------------------------------------------------------------------

    def _to_client(self, peer: bytes, frame: bytes) -> None:
        self.clients[peer].inbox.append(frame)

    def pump(self, messages=()) -> None:
        """GatewayDaemon._pump: engine in, then records, messages, events out."""
        from tunnelgate.protocol import events as E
        wall = self.now
        with self.saver.wlock:
            with self.lock:
                for peer, message in messages:
                    self.engine.on_message(peer, message, wall)
                outgoing = self.engine.take_outgoing()
                self.engine.take_released()
                events = self.engine.take_events()
                taken = self.saver.take() if self.engine.has_changes else None
            for ev in events:
                self.events.add(ev)
            if taken is not None:
                self.saver.write(taken, self.events)
        for peer, message in outgoing:
            self.channels.send(peer, message)
        self.channels.flush(self.now)
        paid = [ev for ev in events if type(ev) is E.PaymentReceived]
        if paid:
            with self.lock:
                for ev in paid:
                    self.engine.payment_confirmed(ev.contract_id, wall)
            self.pump()

    def open(self, wants: list[tuple["Client", list[bytes]]]) -> None:
        """First packets from each client to its destinations, all at once (as a burst
        of datagrams reaches the daemon), then the clients' answers, all of each round
        in one pump, until the contracts are PAID."""
        pkt = bytes(60)
        with self.lock:
            for c, dsts in wants:
                for dst in dsts:
                    self.engine.outbound(c.public, dst, len(pkt), pkt, self.now)
        self.pump()
        for _ in range(16):
            msgs = [(c.public, msg) for c, _ in wants for f in c.answer(self.now)
                    for msg in self.channels.receive(c.public, f, self.now)]
            if not msgs:
                break
            self.pump(msgs)
        self.now += 0.0005


class Client:
    """One peer's side: its session and control channel; accepts and pays every PROPOSE."""

    def __init__(self, private: bytes, gw: Gateway):
        from tunnelgate.protocol.channel import Channel
        s = gw.session
        self.init = s.Initiator(private, gw.public, s.Timing())
        self.channel = Channel(int.from_bytes(os.urandom(8), "big"))
        self.inbox: list[bytes] = []
        self.public = b""
        self.addr = b""

    def answer(self, now: float) -> list[bytes]:
        from tunnelgate.payments.dummy import make_proof
        from tunnelgate.money import cost_msat
        from tunnelgate.protocol import messages as m
        inbox, self.inbox = self.inbox, []
        for frame in inbox:
            for raw in self.channel.receive(frame, now):
                msg = m.decode(raw)
                if isinstance(msg, m.Propose):
                    cost = cost_msat(msg.price, msg.limit_kb)
                    self.channel.send(m.encode(m.Accept(msg.contract_id)))
                    self.channel.send(m.encode(m.Pay(msg.contract_id, cost, "dummy",
                                                     make_proof(msg.contract_id, cost))))
        return self.channel.poll(now)


def _dest(j: int) -> bytes:
    return bytes((198, 19, (j >> 8) & 255, j & 255))


class Counter:
    """What steps allocate, summed: RSS, and with `trace` the Python allocations by line."""

    def __init__(self, trace: bool):
        self.trace, self.rss, self.diffs = trace, 0, {}

    def __call__(self, step) -> None:
        gc.collect()
        r0 = rss_kb()
        s0 = tracemalloc.take_snapshot() if self.trace else None
        step()
        gc.collect()
        self.rss += rss_kb() - r0
        if self.trace:
            for st in tracemalloc.take_snapshot().compare_to(s0, "lineno"):
                fr = st.traceback[0]
                key = f"{fr.filename.rsplit('/tunnelgate/', 1)[-1]}:{fr.lineno}"
                size, count = self.diffs.get(key, (0, 0))
                self.diffs[key] = (size + st.size_diff, count + st.count_diff)

    def report(self, title: str, n: int, top: int) -> None:
        if not self.trace:
            print(f"{title}: RSS {self.rss * 1024 / n:,.0f} B ({n} made)")
            return
        total = sum(size for size, _ in self.diffs.values())
        print(f"\n{title}: {total / n:,.0f} B traced, RSS {self.rss * 1024 / n:,.0f} B with tracemalloc's "
              f"own ({n} made)")
        for key, (size, count) in sorted(self.diffs.items(), key=lambda kv: -kv[1][0])[:top]:
            if size <= 0:
                break
            print(f"  {size / n:8,.0f} B {count / n:6.2f} obj  {key}")


def measure(peers: int, contracts: int, top: int, trace: bool, burst: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="tgmem-"))
    gw = Gateway(work)
    gw.add_peers(1, lambda step: step())              # one-time costs: not counted
    warm = max(1, contracts // 10)
    if trace:
        tracemalloc.start(1)
    per_peer, per_contract = Counter(trace), Counter(trace)
    gw.add_peers(peers - 1, per_peer)
    clients = list(gw.clients.values())
    def grow(first: int, end: int) -> None:
        # contract j: peer j % peers, its destination j // peers; `burst` at once per peer
        for j0 in range(first, end, burst * peers):
            js = range(j0, min(end, j0 + burst * peers))
            gw.open([(clients[i], [_dest(j // peers) for j in js if j % peers == i]) for i in range(peers)])

    grow(0, warm)                                     # the first contracts: warm-up

    per_contract(lambda: grow(warm, contracts))
    states: dict[str, int] = {}
    for b in gw.engine.books.values():
        for c in b.live.values():
            states[c.state.value] = states.get(c.state.value, 0) + 1
    print(f"{peers} peers, {sum(states.values())} live contracts ({states})")
    per_peer.report("per peer", peers - 1, top)
    per_contract.report("per contract", contracts - warm, top)
    if trace:
        tracemalloc.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tglab.memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=100)
    ap.add_argument("--contracts", type=int, default=10_000)
    ap.add_argument("--top", type=int, default=25, help="allocation sites shown (25)")
    ap.add_argument("--burst", type=int, default=1, help="first packets each peer sends at once, "
                    "all peers together (1; the scale bench's peers send up to 64)")
    ap.add_argument("--rss", action="store_true", help="RSS only, without tracemalloc (whose own "
                    "memory is in the RSS otherwise)")
    a = ap.parse_args(argv)
    if a.peers < 2 or a.contracts < 10 or a.contracts > a.peers * 65536:
        ap.error("--peers >= 2, 10 <= --contracts <= peers * 65536")
    measure(a.peers, a.contracts, a.top, not a.rss, a.burst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
