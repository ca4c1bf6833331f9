"""The session lab: a client Initiator and a gateway Responder with fixed keys (GW_PRIV,
GW_PUB, CL_PRIV, CL_PUB, derived by h), joined by two in-memory queues, a fake clock and a
gateway "daemon" that accepts every handshake (Lab; Lab.batch delivers through
receive_groups, fed by groups). Used by the session tests (tests/unit: test_session,
test_session_groups) and by the data-path tests that need real sessions (tests/unit/daemon:
test_datapath_gateway, test_datapath_loops, test_supervise)."""
import hashlib

from tunnelgate.session import (
    DATA,
    HANDSHAKE_DONE,
    KEEPALIVE,
    RAND_BYTES,
    Handshake,
    Initiation,
    Initiator,
    Responder,
    Timing,
    public_key,
)


def h(*parts) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


GW_PRIV = h("gateway")
CL_PRIV = h("client")
GW_PUB = public_key(GW_PRIV)
CL_PUB = public_key(CL_PRIV)


def groups(datagrams) -> list:
    """(datagram, addr) pairs -> receive_groups' input, one datagram per buffer
    (memoryviews, as a receive buffer gives them)."""
    return [(memoryview(dg), len(dg) or 1, addr) for dg, addr in datagrams]


class Lab:
    """A client and a gateway joined by two in-memory queues, a fake clock,
    and a gateway "daemon" that accepts every handshake."""

    batch = False   # deliver through receive_groups (set per test run by test_session's _delivery fixture)

    def __init__(self, timing=Timing(), cipher="chacha", addr="c1"):
        self.timing = timing
        self.cipher = cipher
        self.now = 100.0
        self.wall = 1_700_000_000 * 10**9
        self.n = 0
        self.addr = addr
        self.client = Initiator(CL_PRIV, GW_PUB, timing, cipher=cipher)
        self.gw = Responder(GW_PRIV, timing, cipher=cipher)
        self.to_gw: list[tuple[object, bytes]] = []
        self.to_cl: list[bytes] = []
        self.gw_got: list[tuple[int, bytes]] = []
        self.cl_got: list[tuple[int, bytes]] = []
        self.gw_block = False  # drop everything sent to the gateway
        self.up_log: list[tuple[float, bytes]] = []  # what poll() emitted
        self.down_log: list[tuple[float, bytes]] = []

    def rand(self) -> bytes:
        self.n += 1
        return (h("rand", self.n) + h("idx", self.n))[:RAND_BYTES]

    def begin(self, payload=b"hello"):
        self.to_gw.append((self.addr, self.client.begin(self.now, self.wall, self.rand(), payload)))

    def send_up(self, payload, kind=DATA):
        dg = self.client.seal(kind, payload, self.now)
        if dg is not None:
            self.to_gw.append((self.addr, dg))
        return dg

    def send_down(self, payload, kind=DATA):
        dg = self.gw.seal(CL_PUB, kind, payload, self.now)
        if dg is not None:
            self.to_cl.append(dg)
        return dg

    def deliver(self):
        while self.to_gw or self.to_cl:
            up, self.to_gw = self.to_gw, []
            if self.gw_block:
                up = []
            if self.batch:
                got = self.gw.receive_groups(groups((dg, addr) for addr, dg in up), self.now)
            else:
                got = [self.gw.receive(dg, self.now, addr) for addr, dg in up]
            for r in got:
                if isinstance(r, Initiation):   # receive_groups leaves the key exchange to the daemon
                    r = self.gw.handshake(r)
                if isinstance(r, Handshake):
                    self.to_cl.append(self.gw.accept(r, self.now, self.rand(), b"100.64.0.2"))
                elif r is not None:
                    assert r[0] == CL_PUB
                    if r[1] != KEEPALIVE:
                        self.gw_got.append(r[1:])
            down, self.to_cl = self.to_cl, []
            if self.batch:
                got = [r[1:] for r in self.client.receive_groups(groups((dg, "gw") for dg in down), self.now)]
            else:
                got = [self.client.receive(dg, self.now) for dg in down]
            for r in got:
                if r is not None and r[0] not in (KEEPALIVE, HANDSHAKE_DONE):
                    self.cl_got.append(r)

    def poll(self):
        up = self.client.poll(self.now, self.wall, self.rand())
        down = [dg for addr, dg in self.gw.poll(self.now) if addr == self.addr]
        self.up_log += [(self.now, dg) for dg in up]
        self.down_log += [(self.now, dg) for dg in down]
        self.to_gw += [(self.addr, dg) for dg in up]
        self.to_cl += down

    def advance(self, seconds, step=0.1, traffic=None):
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now += step
            self.wall += int(step * 1e9)
            if traffic:
                traffic(self)
            self.poll()
            self.deliver()

    def connect(self):
        self.begin()
        self.deliver()
        assert self.client.established
        self.poll()  # key confirmation keepalive
        self.deliver()
        return self
