"""The gateway's advert: built from its config, reduced (signed, `more` set) when it is too
large for an mDNS announcement while the whole one is served over the control channel,
ADVERT_REQUEST answered with an advert a client's book takes and rate limited per peer,
and the handshake response naming the signing key bound to the Noise key."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
import types
from pathlib import Path

import pytest

from tunnelgate import config, keys
from tunnelgate.daemon import advertise as adv
from tunnelgate.daemon.discovery import TXT_BUDGET
from tunnelgate.daemon.gateway import GatewayDaemon
from tunnelgate.daemon.leases import Leases
from tunnelgate.daemon.store import Store
from tunnelgate.money import parse_price
from tunnelgate.protocol import advert as A
from tunnelgate.protocol import messages as msgs
from tunnelgate.protocol.advertiser import Advertiser
from tunnelgate.protocol.channel import Channel
from tunnelgate.session import HANDSHAKE_DONE, RAND_BYTES, Initiator, Responder, Timing, public_key

NOW = 1_800_000_000.0

GATEWAY = """
[node]
private_key_file = "gw.key"
state_dir = "state"
[link]
listen = "198.18.1.11:51900"
[network]
tun = "tgs0"
address = "100.64.0.1/24"
upstream_interface = "veth-up"
[pricing]
default_price = "0.5"
contract_kb = 20000
contract_time_s = 1800
grace_time_s = 15
grace_kb = 500
[[pricing.route]]
prefix = "198.18.2.0/24"
price = "0.1"
[[pricing.route]]
prefix = "2001:db8::/32"
price = 2
"""


def gateway_config(tmp_path: Path, extra: str = "", routes: int = 0):
    priv = keys.generate()
    keys.write_private(tmp_path / "gw.key", priv)
    more = "".join(f'[[pricing.route]]\nprefix = "2001:db8:{i:x}::/48"\nprice = "0.{i + 1}"\n'
                   for i in range(routes))
    (tmp_path / "gateway.toml").write_text(GATEWAY + more + extra)
    return config.load(tmp_path / "gateway.toml"), priv


def advertising(cfg, priv, tmp_path, price=None):
    store = Store(tmp_path / "db")
    a = adv.Advertising(cfg, priv, store, lambda: price if price is not None else cfg.pricing.default_price)
    asyncio.run(a.start())
    return a


def test_advert_from_the_config(tmp_path):
    cfg, priv = gateway_config(tmp_path, '[advertise]\nlabel = "north"\nlifetime_s = 300\n')
    assert cfg.advertise.endpoints == ("198.18.1.11:51900",) and not cfg.advertise.mdns
    a = advertising(cfg, priv, tmp_path)
    pub = a.advertiser.current
    ad = A.decode(pub.whole_raw)
    assert ad == pub.whole and not pub.reduced and pub.announced_raw == pub.whole_raw
    assert (ad.noise_key, ad.sign_key) == (public_key(priv), A.sign_public(priv))
    assert ad.endpoints == ("198.18.1.11:51900",) and ad.label == "north"
    assert ad.price == parse_price("0.5")
    assert dict(ad.prices) == {"198.18.2.0/24": parse_price("0.1"), "2001:db8::/32": parse_price("2")}
    assert (ad.contract_kb, ad.contract_s, ad.grace_kb, ad.grace_s) == (20000, 1800, 500, 15)
    assert ad.methods == ("dummy",) and not ad.more
    assert pub.signed_at - 300 < ad.expires - 300 <= pub.signed_at + 1
    assert a.advertiser.due() == pub.signed_at + 150
    st = a.status()
    assert st["seq"] == ad.seq and st["size"] == len(pub.whole_raw) and st["reduced"] is False
    assert st["announcing"] is False
    assert a.view()["price_text"] and a.view()["prices"][0]["prefix"] == "198.18.2.0/24"


def test_cashu_mints_are_payment_methods(tmp_path):
    payment = config.Payment("cashu", (("mints", ("http://198.18.0.9:3338", "https://mint.example")),))
    assert adv.methods(payment) == ("cashu", "cashu:http://198.18.0.9:3338", "cashu:https://mint.example")
    assert adv.methods(config.Payment("electrum")) == ("electrum",)


def test_sequence_rises_across_restarts_and_price_changes(tmp_path):
    cfg, priv = gateway_config(tmp_path)
    price = [parse_price("0.5")]
    store = Store(tmp_path / "db")
    a = adv.Advertising(cfg, priv, store, lambda: price[0])
    asyncio.run(a.start())
    first = a.advertiser.current.seq
    price[0] = parse_price("0.3")
    a.refresh()                       # twice in the same second: still a new sequence each
    a.refresh()
    assert a.advertiser.current.seq == first + 2
    assert A.decode(a.advertiser.current.whole_raw).price == parse_price("0.3")
    # a restart in the same second: the store's number, not the clock's, is the floor
    b = adv.Advertising(cfg, priv, store, lambda: price[0])
    asyncio.run(b.start())
    assert b.advertiser.current.seq == first + 3
    # signed again at half the lifetime, not before
    due = b.advertiser.due()
    b.tick(due - 1)
    assert b.advertiser.current.seq == first + 3
    b.tick(due)
    assert b.advertiser.current.seq > first + 3


def test_too_large_for_mdns_is_announced_reduced_and_served_whole(tmp_path):
    cfg, priv = gateway_config(tmp_path, routes=40)
    a = advertising(cfg, priv, tmp_path)
    pub = a.advertiser.current
    assert len(pub.whole_raw) > TXT_BUDGET and pub.reduced
    small, whole = A.decode(pub.announced_raw), A.decode(pub.whole_raw)
    assert len(pub.announced_raw) <= TXT_BUDGET
    assert small.more and small.prices == () and small.seq == whole.seq and small.price == whole.price
    assert not whole.more and len(whole.prices) == 42 and pub.priced_left_out == 0
    # the flag is signed: a reduced advert cannot be passed off as whole
    now = whole.expires - 100
    outer = json.loads(pub.announced_raw)
    del outer["b"]["more"]
    book = A.AdvertBook()
    assert book.offer(json.dumps(outer).encode(), "198.18.1.11", now) is None
    assert book.counts == {"bad_signature": 1}
    # a client: the reduced one from mDNS, then the whole one (same seq) over the channel
    assert book.offer(pub.announced_raw, "198.18.1.11", now).advert.more
    msg = a.on_request(b"peer", now)
    got = book.fetched(msgs.decode(msgs.encode(msg)).advert, public_key(priv), A.sign_public(priv), now)
    assert got is not None and got.verified and got.advert == whole and got.source == "198.18.1.11"
    # ... and the reduced one again (mDNS re-resolving) does not replace it
    assert book.offer(pub.announced_raw, "198.18.1.11", now + 1) is None
    assert book.candidates[(whole.noise_key, whole.sign_key)].advert == whole


def test_priced_prefixes_beyond_an_advert_are_left_out_most_specific_kept():
    priv = os.urandom(32)
    prices = tuple((f"2001:db8:{i:x}00::/{40 + i % 8}", i) for i in range(A.MAX_PRICED + 30))
    tpl = A.Advert(noise_key=public_key(priv), sign_key=A.sign_public(priv),
                   endpoints=("198.18.1.11:51900",), price=5, prices=prices, methods=("dummy",))
    pub = Advertiser(priv, tpl, 600, TXT_BUDGET).sign(5, 1, NOW)
    whole = A.decode(pub.whole_raw)
    assert 0 < len(whole.prices) <= A.MAX_PRICED and pub.priced_left_out == len(prices) - len(whole.prices)
    kept = {int(p.rpartition("/")[2]) for p, _ in whole.prices}
    dropped = {int(p.rpartition("/")[2]) for p, _ in prices if (p, _) not in whole.prices}
    assert min(kept) >= max(dropped)
    assert len(msgs.encode(msgs.AdvertMessage(pub.whole_raw.decode()))) <= msgs.MAX_MESSAGE


def test_a_sequence_number_is_never_reused():
    priv = os.urandom(32)
    tpl = A.Advert(noise_key=public_key(priv), sign_key=A.sign_public(priv), endpoints=(), price=1)
    a = Advertiser(priv, tpl, 600, TXT_BUDGET)
    a.sign(1, 7, NOW)
    with pytest.raises(ValueError, match="not after 7"):
        a.sign(2, 7, NOW)


# --- the daemon: ADVERT_REQUEST on the control channel, sign_key in the handshake -----------

def daemon(tmp_path):
    cfg, priv = gateway_config(tmp_path)
    d = GatewayDaemon(cfg, priv)
    d.store = Store(tmp_path / "db")
    d.adverts = adv.Advertising(cfg, priv, d.store, lambda: cfg.pricing.default_price)
    asyncio.run(d.adverts.start())
    sent: list[tuple[bytes, bytes]] = []
    d._send_control = lambda peer, frame: sent.append((peer, frame))
    d.channels.send_frame = d._send_control
    d._pump = lambda messages=(), poll=None: d.channels.flush(0.0) or d.engine_got.extend(messages)
    d.engine_got = []
    return d, priv, sent


def test_advert_request_is_answered_on_the_channel_and_rate_limited(tmp_path):
    d, priv, sent = daemon(tmp_path)
    peer = os.urandom(32)
    client = Channel(1)
    for _ in range(5):
        client.send(msgs.encode(msgs.AdvertRequest()))
    client.send(msgs.encode(msgs.QuoteRequest("198.18.2.7/32")))
    d._control_in([(peer, f) for f in client.poll(0.0)])
    answers = [msgs.decode(m) for _, frame in sent for m in client.receive(frame, 0.0)]
    adverts = [m for m in answers if type(m) is msgs.AdvertMessage]
    assert len(adverts) == 3 and d.adverts.advertiser.stats["requests_limited"] == 2
    # the engine gets the contract messages, never the advert requests
    assert d.engine_got == [(peer, msgs.QuoteRequest("198.18.2.7/32"))]
    book = A.AdvertBook()
    got = book.fetched(adverts[0].advert, public_key(priv), A.sign_public(priv), time.time())
    assert got is not None and got.verified and got.advert.price == parse_price("0.5")
    # another peer has its own allowance
    other = Channel(2)
    other.send(msgs.encode(msgs.AdvertRequest()))
    sent.clear()
    d._control_in([(os.urandom(32), f) for f in other.poll(0.0)])
    assert [type(msgs.decode(m)) for _, f in sent for m in other.receive(f, 0.0)] == [msgs.AdvertMessage]


def test_an_advert_naming_other_keys_is_refused_from_the_channel(tmp_path):
    d, priv, sent = daemon(tmp_path)
    raw = d.adverts.advertiser.current.whole_raw
    book = A.AdvertBook()
    assert book.fetched(raw, os.urandom(32), A.sign_public(priv), NOW) is None
    assert book.fetched(raw, public_key(priv), A.sign_public(os.urandom(32)), NOW) is None
    assert book.counts == {"wrong_key": 2} and not book.candidates


def test_handshake_response_names_the_signing_key(tmp_path):
    d, priv, sent = daemon(tmp_path)
    d.responder = Responder(priv, Timing(), lock=threading.Lock())
    d.leases = Leases(d.store, d.cfg.address, 600)
    d._protected = lambda: set()
    datagrams = []
    d.sock = types.SimpleNamespace(sendto=lambda dg, addr: datagrams.append(dg))
    cl_priv = os.urandom(32)
    client = Initiator(cl_priv, public_key(priv), Timing())
    hs = d.responder.receive(client.begin(1.0, 1_700_000_000 * 10**9, os.urandom(RAND_BYTES), b"{}"), 1.0,
                             ("198.18.1.2", 40000))
    d._handshake(hs, 1.0)
    kind, payload = client.receive(datagrams[0], 1.0)
    assert kind == HANDSHAKE_DONE
    info = json.loads(payload)
    assert base64.b64decode(info["sign_key"]) == A.sign_public(priv)
    assert info["address"] == "100.64.0.2/24"


def test_status_and_advert_command_text(tmp_path):
    from tunnelgate.status_text import advert_text, render
    cfg, priv = gateway_config(tmp_path, routes=40)
    a = advertising(cfg, priv, tmp_path)
    gw = json.loads((Path(__file__).parents[1] / "data" / "status_gateway.json").read_text())
    text = render({**gw, "advert": a.status()})
    line = next(l for l in text.splitlines() if l.startswith("advert"))
    seq = a.advertiser.current.seq
    assert f"seq {seq}" in line and "reduced to" in line and "not announced" in line
    view = json.loads(json.dumps(a.view()))       # as the control socket carries it
    out = advert_text(view)
    assert f"seq {seq}" in out and "2001:db8:27::/48" in out and "0.5 msat/KB (default)" in out
    assert "not announced" in out


def test_a_missing_interface_stops_the_start_saying_which(tmp_path):
    from tunnelgate.daemon.base import DaemonError
    cfg, priv = gateway_config(tmp_path, '[advertise]\nmdns = true\ninterfaces = ["tg-nonesuch"]\n')
    with pytest.raises(DaemonError, match=r"\[advertise\].*'tg-nonesuch'.*does not exist"):
        advertising(cfg, priv, tmp_path)
