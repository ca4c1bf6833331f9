"""daemon/srcnat.py: which destinations leave with which gateway's lease, recomputed only
when a destination moved or an address changed, applied one change at a time, a failure
tried again later."""

import asyncio
from types import SimpleNamespace

from tunnelgate.daemon.links import Links, SellerLink
from tunnelgate.daemon.srcnat import RETRY_S, SourceNat

A, B = b"a" * 32, b"b" * 32


def setup():
    links = Links()
    a = SellerLink(A, None, ("198.18.1.11", 1))
    b = SellerLink(B, None, ("198.18.1.12", 1))
    a.address, a.address6 = "100.64.0.2/24", "fd64::2/64"
    b.address, b.address6 = "100.64.1.2/24", "fd64::2/64"
    links.add(a)
    links.add(b)
    market = SimpleNamespace(moves=0, chooser=SimpleNamespace(current={"0.0.0.0/0": A, "::/0": A}))
    applied, fail = [], []

    async def apply(own, routes):
        if fail:
            raise RuntimeError("nft missing")
        applied.append((own, routes))
    sn = SourceNat(links, market, "tg0", apply, lambda coro: asyncio.run(coro))
    return sn, a, b, market, applied, fail


def test_only_what_another_lease_carries_is_translated_and_only_after_a_change():
    sn, a, b, market, applied, _ = setup()
    sn.tick(0.0, None)                                  # no primary yet: nothing
    sn.tick(0.0, a)
    assert applied == [(["100.64.0.2", "fd64::2"], [])]          # all own: the table goes
    sn.tick(0.1, a)
    assert len(applied) == 1                            # nothing changed: not even recomputed
    market.chooser.current.update({"0.0.0.0/0": B, "::/0": B, "198.18.21.2/32": A, "198.18.22.2/32": B})
    market.moves += 1
    sn.tick(0.2, a)
    assert applied[-1][1] == [("198.18.21.2/32", "100.64.0.2"), ("198.18.22.2/32", "100.64.1.2"),
                              ("0.0.0.0/0", "100.64.1.2"), ("::/0", "fd64::2")]
    b.address = "100.64.2.2/24"                          # a new handshake, another lease
    sn.tick(0.3, a)
    assert applied[-1][1][1] == ("198.18.22.2/32", "100.64.2.2") and len(applied) == 3


def test_a_failed_change_is_tried_again_after_the_retry_time():
    sn, a, b, market, applied, fail = setup()
    market.chooser.current["0.0.0.0/0"] = B
    fail.append(1)
    sn.tick(0.0, a)
    fail.clear()
    sn.tick(RETRY_S / 2, a)
    assert applied == []
    sn.tick(10 ** 9, a)                                  # (its clock is time.monotonic())
    assert applied and applied[-1][1] == [("0.0.0.0/0", "100.64.1.2"), ("::/0", "fd64::2")]
