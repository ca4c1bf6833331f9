"""Gateways found over mDNS on a shared LAN (a bridge in the lab): real zeroconf
announcers in two gateway namespaces, a real browser in the client namespace
feeding an AdvertBook. Forged adverts cross the LAN too and are refused, each counted
by its reason: a bad signature, an expired one, an older sequence, a wrong key."""

import json
import os
import secrets
import sys

import pytest

from market_helpers import ANNOUNCE
from tglab.lab import REPO_ROOT

BROWSE = r"""
import asyncio, json, sys, time
from tunnelgate.daemon.discovery import Browser
from tunnelgate.protocol.advert import AdvertBook
book = AdvertBook()
want, limit = int(sys.argv[1]), float(sys.argv[2])
# what this client learnt before: gw3's advert with sequence 5 (so its seq-1 announcement is a
# replay) and gw1's signing key from a handshake (so an advert for gw1 signed otherwise is forged)
book.offer(bytes.fromhex(sys.argv[3]), "earlier", time.time())
book.bind(bytes.fromhex(sys.argv[4]), bytes.fromhex(sys.argv[5]))
async def main():
    b = Browser(["veth0"], lambda raw, src: book.offer(raw, src, time.time()))
    await b.start()
    end = time.monotonic() + limit
    while time.monotonic() < end and sum(book.counts.values()) < want:
        await asyncio.sleep(0.1)
    await b.close()
    print(json.dumps({"counts": book.counts, "found": sorted(
        [c.advert.label, c.advert.endpoints[0], c.advert.price, c.source, c.verified]
        for c in book.candidates.values())}))
asyncio.run(main())
"""


@pytest.mark.root
def test_client_finds_gateways_on_the_lan_and_refuses_forged_adverts(market_lab):
    lab = market_lab
    from tunnelgate.protocol import advert as A
    from tunnelgate.session import public_key
    import time
    keys = [secrets.token_bytes(32) for _ in range(3)]
    procs = []
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    other = [secrets.token_bytes(32) for _ in range(3)]
    announcers = [("gw1", keys[0], "ok", "gw1", None), ("gw2", keys[1], "forge", "gw2", None),
                  ("gw2", other[0], "expired", "gw2x", None), ("gw3", keys[2], "ok", "gw3", None),
                  ("gw3", other[1], "wrongkey", "gw3w", public_key(keys[0]))]
    for i, (ns, key, mode, label, noise) in enumerate(announcers):
        ep = f"198.18.1.{10 + int(ns[2])}:51820"
        procs.append(lab.popen(ns, sys.executable, "-c", ANNOUNCE, key.hex(), mode, label, ep, "30",
                               str(1000 * (i + 1)), *([noise.hex()] if noise else []), env=env))
    earlier = A.encode(A.Advert(noise_key=public_key(keys[2]), sign_key=A.sign_public(keys[2]),
                                endpoints=("198.18.1.13:51820",), price=7, seq=5,
                                expires=int(time.time()) + 600, label="gw3"), keys[2])
    out = lab.python("client", BROWSE, "6", "25", earlier.hex(), public_key(keys[0]).hex(),
                     A.sign_public(keys[0]).hex(), timeout=45)
    got = json.loads(out.stdout)
    for p in procs:
        p.terminate()
        p.wait(5)
    # gw1 verified (bound by "its handshake"); gw3 as learnt before, its replayed seq-1 refused
    assert got["found"] == [["gw1", "198.18.1.11:51820", 1000, "198.18.1.11", True],
                            ["gw3", "198.18.1.13:51820", 7, "earlier", False]], got
    assert got["counts"] == {"accepted": 2, "bad_signature": 1, "expired": 1, "stale_seq": 1,
                             "wrong_key": 1}, got
