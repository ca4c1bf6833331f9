"""Gateways found over mDNS on a shared LAN (a bridge in the lab): real zeroconf
announcers in two gateway namespaces, a real browser in the client namespace
feeding an AdvertBook. A forged advert crosses the LAN too and is refused."""

import json
import os
import secrets
import sys

import pytest

from tglab.lab import REPO_ROOT

ANNOUNCE = r"""
import asyncio, base64, json, sys, time
from tunnelgate.daemon.discovery import Announcer
from tunnelgate.protocol import advert as A
from tunnelgate.session import public_key
priv, forge, label, ep, seconds = bytes.fromhex(sys.argv[1]), sys.argv[2] == "1", sys.argv[3], sys.argv[4], float(sys.argv[5])
ad = A.Advert(noise_key=public_key(priv), sign_key=A.sign_public(priv), endpoints=(ep,), price=int(sys.argv[6]),
              seq=1, expires=int(time.time()) + 600, label=label, methods=("dummy",))
raw = A.encode(ad, priv)
if forge:   # same advert, one price changed after signing
    outer = json.loads(raw); outer["b"]["price"] = 1; raw = json.dumps(outer, sort_keys=True, separators=(",", ":")).encode()
async def main():
    a = Announcer(["veth-c"], label, 51820)
    await a.start(raw)
    print("up", flush=True)
    await asyncio.sleep(seconds)
    await a.close()
asyncio.run(main())
"""

BROWSE = r"""
import asyncio, json, sys, time
from tunnelgate.daemon.discovery import Browser
from tunnelgate.protocol.advert import AdvertBook
book = AdvertBook()
want, limit = int(sys.argv[1]), float(sys.argv[2])
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
def test_client_finds_gateways_on_the_lan_and_refuses_a_forged_advert(market_lab):
    lab = market_lab
    keys = [secrets.token_bytes(32) for _ in range(3)]
    procs = []
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    for i, (key, forge) in enumerate(zip(keys, (False, False, True)), 1):
        p = lab.popen(f"gw{i}", sys.executable, "-c", ANNOUNCE, key.hex(), "1" if forge else "0", f"gw{i}",
                      f"198.18.1.{10 + i}:51820", "30", str(1000 * i), env=env)
        procs.append(p)
    out = lab.python("client", BROWSE, "3", "20", timeout=40)
    got = json.loads(out.stdout)
    for p in procs:
        p.terminate()
        p.wait(5)
    assert got["found"] == [["gw1", "198.18.1.11:51820", 1000, "198.18.1.11", False],
                            ["gw2", "198.18.1.12:51820", 2000, "198.18.1.12", False]], got
    assert got["counts"] == {"accepted": 2, "bad_signature": 1}, got
