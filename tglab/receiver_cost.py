"""The client's receiver with several gateways (daemon/initiators.py) against the bare
Initiator of a one-gateway client, in one process, on the same datagrams (issue 18).

    .venv/bin/python -m tglab.receiver_cost [--batches N] [--gateways G]
    (scripts/bench --choice prints it as well)

G gateways (Responder sessions) with a client Initiator each, handshaken in memory.
Every batch: 64 datagrams of 1448-byte chunk records (a download's chunk runs, as
UDP GRO hands them over: one buffer per run of equal size) from the first gateway,
sealed afresh (not timed: the replay window refuses datagrams seen before), then
opened by one receiver; the two receivers take the batches in turns. Reported: ns per
datagram of each (median over the batches) and their ratio. Decryption dominates
both; the difference is the dispatch. No namespaces, no root.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time

from tunnelgate.daemon.initiators import Initiators
from tunnelgate.daemon.links import Links, SellerLink
from tunnelgate.offload.chunks import DATA_CHUNK
from tunnelgate.session import RAND_BYTES, Handshake, Initiation, Initiator, Responder, Timing, public_key

PER_BATCH = 64
CHUNK = 1448


def _key(tag: str) -> bytes:
    return hashlib.blake2b(tag.encode(), digest_size=32).digest()


class Pair:
    """One gateway's Responder and the client's Initiator for it, handshaken."""

    def __init__(self, i: int, client_priv: bytes, now: float) -> None:
        self.priv = _key(f"gw{i}")
        self.gw = Responder(self.priv, Timing())
        self.client = Initiator(client_priv, public_key(self.priv), Timing())
        self.client_pub = public_key(client_priv)
        self.endpoint = (f"198.18.1.{10 + i}", 51900)
        init = self.client.begin(now, time.time_ns(), os.urandom(RAND_BYTES), b"{}")
        r = self.gw.receive(init, now, ("198.18.1.2", 40000))
        if isinstance(r, Initiation):
            r = self.gw.handshake(r)
        if not isinstance(r, Handshake):
            raise RuntimeError("in-memory handshake failed")
        resp = self.gw.accept(r, now, os.urandom(RAND_BYTES), b"{}")
        self.client.receive(resp, now)
        for dg in self.client.poll(now, time.time_ns(), os.urandom(RAND_BYTES)):    # key confirmation
            self.gw.receive(dg, now, ("198.18.1.2", 40000))
        if not self.client.established:
            raise RuntimeError("in-memory handshake did not establish the client's session")

    def batch(self, now: float) -> list:
        """One batch as UDP GRO gives it: (buffer, segment size, source)."""
        dgs = self.gw.seal_batch(self.client_pub, DATA_CHUNK, [b"x" * CHUNK] * PER_BATCH, now)
        size = len(dgs[0])
        return [(b"".join(dgs), size, self.endpoint)]


def measure(batches: int, gateways: int) -> dict:
    now = 1000.0
    cpriv = _key("client")
    single = Pair(1, cpriv, now)
    pairs = [Pair(i, cpriv, now) for i in range(1, gateways + 1)]
    links = Links()
    for p in pairs:
        links.add(SellerLink(public_key(p.priv), p.client, p.endpoint))
    multi = Initiators(links)
    receivers = {"bare": (single, single.client.receive_groups), "initiators": (pairs[0], multi.receive_groups)}
    ns: dict[str, list[float]] = {k: [] for k in receivers}
    for b in range(batches):
        order = list(receivers) if b % 2 == 0 else list(reversed(receivers))
        for key in order:
            pair, receive = receivers[key]
            groups = pair.batch(now)
            t0 = time.perf_counter_ns()
            got = receive(groups, now)
            dt = time.perf_counter_ns() - t0
            if not got:
                raise RuntimeError(f"{key}: the batch did not open")
            ns[key].append(dt / PER_BATCH)
    med = {k: statistics.median(v) for k, v in ns.items()}
    return {"batches": batches, "gateways": gateways, "ns_per_datagram": med,
            "ratio": med["initiators"] / med["bare"]}


def report(r: dict) -> str:
    m = r["ns_per_datagram"]
    return (f"receiver, in process ({r['batches']} batches of {PER_BATCH} chunk datagrams, in turns): "
            f"bare Initiator {m['bare']:.0f} ns/datagram, Initiators of {r['gateways']} gateways "
            f"{m['initiators']:.0f} ns/datagram: x{r['ratio']:.3f}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m tglab.receiver_cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=4000)
    ap.add_argument("--gateways", type=int, default=3)
    a = ap.parse_args(argv)
    print(report(measure(a.batches, a.gateways)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
