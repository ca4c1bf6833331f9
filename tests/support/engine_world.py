"""The in-memory contract world: a Seller and a Buyer over two control Channels and a
lossy, reordering in-memory link, driven by a fake clock (World), with the peer key and
destination it meters (PEER, DST), an IPv4 packet builder (ip4) and the default gateway
Pricing and client ClientPolicy (pricing, policy; keyword arguments override). Used by
the contract engine tests (tests/unit/protocol: test_contract_engines, _credit, _deadlines)
and by the daemon tests that drive a real engine (tests/unit/daemon: test_durable_contracts,
test_incremental_save, test_status_lock)."""
import random
import struct

from tunnelgate.protocol import events as E
from tunnelgate import packet as pk
from tunnelgate.meter import FORWARD
from tunnelgate.money import parse_price
from tunnelgate.protocol.channel import Channel
from tunnelgate.protocol.buyer import Buyer, ClientPolicy
from tunnelgate.protocol.seller import Seller, Pricing
from tunnelgate.protocol.messages import decode, encode

PEER = b"\x01" * 32
DST = "198.18.2.7"


def ip4(dst=DST, total=1000, src="100.64.0.2"):
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0,
                       pk.addr_bytes(src), pk.addr_bytes(dst)) + bytes(total - 20)


def pricing(**kw):
    d = dict(default_price=parse_price("0.5"), floor_price=parse_price("0.3"), contract_kb=100,
             contract_time_s=600, grace_time_s=5, grace_kb=50, payment_methods=("dummy",), account="acct")
    d.update(kw)
    return Pricing(**d)


def policy(**kw):
    d = dict(max_price=parse_price("1"), counter_fraction="0.8", data_renewal_kb=0, time_renewal_s=0)
    d.update(kw)
    return ClientPolicy(**d)


class World:
    def __init__(self, pr=None, po=None, loss=0.1, reorder=0.3, seed=1, autopay=True, confirm=True):
        self.gw = Seller(pr or pricing())
        self.cl = Buyer(po or policy())
        self.gch, self.cch = Channel(epoch=1), Channel(epoch=2)
        self.rng = random.Random(seed)
        self.loss, self.reorder = loss, reorder
        self.link = []
        self.now = 1_000_000.0
        self.autopay, self.confirm = autopay, confirm
        self.gev, self.cev = [], []
        self.released = []
        self.delivered = 0        # bytes that reached the internet side

    def step(self, dt=0.02):
        self.now += dt
        now = self.now
        self.gw.poll(now)
        self.cl.poll(now)
        self._pump()
        for src, dst in ((self.gch, self.cch), (self.cch, self.gch)):
            for fr in src.poll(now):
                if self.rng.random() < self.loss:
                    continue
                d = 0.005 + (self.rng.random() * 0.05 if self.rng.random() < self.reorder else 0)
                self.link.append((now + d, dst, fr))
        due = sorted((x for x in self.link if x[0] <= now), key=lambda x: x[0])
        self.link = [x for x in self.link if x[0] > now]
        for _, dst, fr in due:
            for raw in dst.receive(fr, now):
                msg = decode(raw)
                if dst is self.gch:
                    self.gw.on_message(PEER, msg, now)
                else:
                    self.cl.on_message(PEER, msg, now)
        self._pump()

    def _pump(self):
        now = self.now
        for peer, msg in self.gw.take_outgoing():
            assert peer == PEER
            self.gch.send(encode(msg))
        for _, msg in self.cl.take_outgoing():
            self.cch.send(encode(msg))
        for e in self.cl.take_events():
            self.cev.append(e)
            if e.kind == E.PaymentDue.kind and self.autopay:
                self.cl.paid(PEER, e.contract_id, "dummy", "proof-" + e.contract_id)
                self.cch.send(encode(self.cl.take_outgoing()[-1][1]))
        for e in self.gw.take_events():
            self.gev.append(e)
            if e.kind == E.PaymentReceived.kind and self.confirm:
                self.gw.payment_confirmed(e.contract_id, now)
        for peer, p in self.gw.take_released():
            self.released.append(p)
            self.delivered += pk.parse(p)[3]

    def run(self, seconds, dt=0.02):
        for _ in range(int(seconds / dt)):
            self.step(dt)

    def send(self, dst=DST, size=1000):
        """One client->internet packet: both sides meter; returns the gateway's decision."""
        p = ip4(dst, size)
        d, length = pk.dst_and_length(p)
        self.cl.outbound(d, length, self.now)
        r = self.gw.outbound(PEER, d, length, p, self.now)
        if r == FORWARD:
            self.delivered += length
        return r

    def stream(self, n, dt, size=1000):
        """n client packets, one every dt seconds; the gateway's decision for each."""
        out = []
        for _ in range(n):
            out.append(self.send(size=size))
            self.step(dt)
        return out

    def reply(self, src=DST, size=1000):
        a = pk.addr_bytes(src)
        r = self.gw.inbound(PEER, a, size, self.now)
        if r == FORWARD:
            self.cl.inbound(a, size, self.now)
        return r

    def kinds(self, side):
        return [e.kind for e in (self.gev if side == "gw" else self.cev)]

    def gw_contract(self, cid=None):
        cs = self.gw.contracts(PEER, self.now, history=True)
        return cs if cid is None else next(c for c in cs if c["contract_id"] == cid)
