"""Shared pieces of the payment integration tests: the gateway's [pricing] and the client's
[policy] they use (PRICING, POLICY: a contract of 2000 KB at 1 msat/KB, COST msat); plumbing
to make sockets inside a lab namespace (in_netns) and forward a port of this process into one
(Forward); FakeClient, a second client driven by hand (handshake, REQUEST, ACCEPT, PAY with a
proof the test chooses); the make_env fixture (TunnelEnvs whose namespaces reach the test's
payment daemons through Forwards: import it into a test module to use it); readers of a
tunnel's state (ctl, contracts, events, journal, client_payments, peer_credit, paid); and
ensure_cashu_installed (the cashu wallet, installed by scripts/install-payments if missing).
Used by tests/integration: test_payments_e2e, test_payments_electrum, test_payments_cashu."""

from __future__ import annotations

import base64
import ctypes
import importlib
import os
import socket
import sqlite3
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pytest

from tgenv import PORT, TunnelEnv
from tunnelgate import keys
from tunnelgate import session as sess
from tunnelgate.daemon.control import request
from tglab.lab import GW_LINK
from tunnelgate.protocol import messages as m
from tunnelgate.protocol.channel import Channel

REPO = Path(__file__).resolve().parents[2]
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

# a contract: 2000 KB at 1 msat/KB = 2000 msat = 2 sat (whole sats: cashu counts in sat)
PRICING = """[pricing]
default_price = "1"
contract_kb = 2000
grace_time_s = 3
grace_kb = 1000
proposal_timeout_s = 2
"""
POLICY = """[policy]
max_price = "2"
data_renewal_kb = 0
time_renewal_s = 0
"""
COST = 2000


# --- plumbing: sockets inside a lab namespace, a TCP forwarder ------------------------------

def in_netns(ns: str, fn):
    """fn() with this thread inside network namespace ns (sockets made there stay there)."""
    me = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
        try:
            return fn()
        finally:
            if _libc.setns(me, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the test's namespace")
    finally:
        os.close(me)
        os.close(target)


class Forward:
    """127.0.0.1:port inside ns -> 127.0.0.1:port here (the test module's mint / node / wallet)."""

    def __init__(self, ns: str, port: int):
        def listen():
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(64)
            return s
        self.port = port
        self.sock = in_netns(ns, listen)
        self.sock.settimeout(0.5)
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                a, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            try:
                b = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                a.close()
                continue
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(x, y), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        src.settimeout(120)
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
                try:
                    s.shutdown(how)
                except OSError:
                    pass

    def close(self):
        self.stopped = True
        self.sock.close()


class FakeClient:
    """A second tunnelgate client driven by hand: handshake, REQUEST, ACCEPT, PAY."""

    def __init__(self, lab, gw_public: str):
        self.init = sess.Initiator(keys.generate(), base64.b64decode(gw_public), sess.Timing())

        def udp():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("0.0.0.0", 0))
            return s
        self.sock = in_netns(lab.client, udp)
        self.sock.settimeout(0.05)
        self.ch = Channel(int.from_bytes(os.urandom(8), "big"))
        self.got: list[m.Message] = []
        self.sock.sendto(self.init.begin(time.monotonic(), time.time_ns(), os.urandom(sess.RAND_BYTES)),
                         (GW_LINK, PORT))
        assert self.run(lambda: self.init.established, 10), "fake client: no handshake"

    def send(self, msg: m.Message):
        self.ch.send(m.encode(msg))

    def run(self, pred, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = time.monotonic()
            out = self.init.poll(now, time.time_ns(), os.urandom(sess.RAND_BYTES))
            for fr in self.ch.poll(now):
                d = self.init.seal(sess.CONTROL, fr, now)
                if d is not None:
                    out.append(d)
            for d in out:
                self.sock.sendto(d, (GW_LINK, PORT))
            try:
                r = self.init.receive(self.sock.recv(65536), time.monotonic())
            except socket.timeout:
                r = None
            if r is not None and r[0] == sess.CONTROL:
                for raw in self.ch.receive(r[1], time.monotonic()):
                    self.got.append(m.decode(raw))
            if pred():
                return True
        return False

    def first(self, cls, **match):
        return next((x for x in self.got if isinstance(x, cls)
                     and all(getattr(x, k) == v for k, v in match.items())), None)

    def quote(self, destination: str) -> m.Propose:
        self.send(m.Request(destination))
        assert self.run(lambda: self.first(m.Propose, destination=destination), 10), self.got
        return self.first(m.Propose, destination=destination)

    def close(self):
        self.sock.close()


# --- the make_env fixture ---------------------------------------------------------------------

@pytest.fixture
def make_env(lab):
    made, forwards = [], []

    def make(gateway: str = "", client: str = "", ports: tuple[int, ...] = ()) -> TunnelEnv:
        for p in ports:
            for ns in (lab.client, lab.gw):
                forwards.append(Forward(ns, p))
        e = TunnelEnv(lab, gateway_extra=gateway, client_extra=client)
        made.append(e)
        return e

    yield make
    for e in made:
        logs = e.logs()
        e.close()
        print(logs)
    for f in forwards:
        f.close()


# --- helpers ----------------------------------------------------------------------------------

def ctl(env, which, cmd, **args):
    return request(env.dir / ("gw" if which == "gw" else "cl") / "control.sock", cmd, **args)


def contracts(env, which, dst=None):
    return [c for c in ctl(env, which, "contracts", all=True)
            if dst is None or c["destination"] in (dst, f"{dst}/32")]


def events(env, which, kind=None):
    return [e for e in ctl(env, which, "events") if kind is None or e["kind"] == kind]


def journal(env, sql, *args):
    with sqlite3.connect(env.dir / "gw" / "payments.sqlite") as db:
        return db.execute(sql, args).fetchall()


def client_payments(env):
    with sqlite3.connect(env.dir / "cl" / "tunnelgate.db") as db:
        return db.execute("SELECT contract_id, proof, amount_msat FROM client_payments").fetchall()


def peer_credit(env) -> int:
    return sum(env.status("gw")["payment"]["credit_msat"].values())


def paid(env, which, dst=None):
    return [c for c in contracts(env, which, dst) if c["paid"]]


# --- cashu install ----------------------------------------------------------------------------

def ensure_cashu_installed():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            importlib.import_module("cashu.wallet.wallet")
        return
    except ImportError:
        pass
    # what scripts/setup does through scripts/install-payments; idempotent
    r = subprocess.run([str(REPO / "scripts/install-payments")], env={**os.environ, "TUNNELGATE_SKIP_KNOTS": "1"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"scripts/install-payments failed:\n{r.stdout}\n{r.stderr}"
    importlib.invalidate_caches()
    importlib.import_module("cashu.wallet.wallet")
