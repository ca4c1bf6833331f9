"""Shared pieces of the market and discovery integration tests: ANNOUNCE, a Python script
(run as `python -c ANNOUNCE priv_hex mode label endpoint seconds price [noise_key_hex]`) that
announces one signed advert over mDNS on the lab LAN, good, forged or expired by its mode,
under another's noise key given the optional last argument; POLICY, the client's [policy] for
a market (max_price 2); replies, the icmp_seq numbers answered in a ping's output. Used by
tests/integration: test_discovery, test_adverts, test_market, test_market_discovery."""

import re

ANNOUNCE = r"""
import asyncio, base64, json, sys, time
from tunnelgate.daemon.discovery import Announcer
from tunnelgate.protocol import advert as A
from tunnelgate.session import public_key
priv, mode, label, ep, seconds = bytes.fromhex(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
noise = bytes.fromhex(sys.argv[7]) if len(sys.argv) > 7 else public_key(priv)   # "wrongkey": another's
expires = int(time.time()) + (-10 if mode == "expired" else 600)
ad = A.Advert(noise_key=noise, sign_key=A.sign_public(priv), endpoints=(ep,), price=int(sys.argv[6]),
              seq=1, expires=expires, label=label, methods=("dummy",))
raw = A.encode(ad, priv)
if mode == "forge":   # same advert, one price changed after signing
    outer = json.loads(raw); outer["b"]["price"] = 1; raw = json.dumps(outer, sort_keys=True, separators=(",", ":")).encode()
async def main():
    a = Announcer(["veth-c"], label, 51820)
    await a.start(raw)
    print("up", flush=True)
    await asyncio.sleep(seconds)
    await a.close()
asyncio.run(main())
"""

POLICY = '[policy]\nmax_price = "2"\n'


def replies(out: str) -> list[int]:
    return [int(m) for m in re.findall(r"icmp_seq=(\d+)", out)]
