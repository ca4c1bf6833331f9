"""The market found over mDNS only (no [gateway], no [[gateways]]: `[discovery] mdns =
true`), in real namespaces (topology.market): the daemons' discovery path end to end,
buying from the cheapest found; an advert whose key never completes a handshake (an
announcer with no daemon behind its endpoint) stays `unverified` and carries nothing,
however cheap it claims to be; choice and failover with IPv6 destinations."""

import json
import os
import secrets
import subprocess
import sys
import time

import pytest

from market_helpers import ANNOUNCE, POLICY, replies
from tglab.lab import REPO_ROOT
from tglab.market_env import PORT, dump, wait_for
from tglab.topology import market_gateway

pytestmark = pytest.mark.root
UP = market_gateway(1)["upstream"]
UP6 = market_gateway(1)["upstream6"]


def cli_gateways(lab, env) -> list[dict]:
    return json.loads(env.tg("client", "gateways", "--json", "-c", str(env.client_conf)).stdout)


def ping(lab, dst, count=5, interval=0.2):
    return lab.run("client", "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", dst,
                   check=False, timeout=count * (interval + 1) + 10)


def test_a_client_with_mdns_only_finds_the_gateways_and_buys_from_the_cheapest(market_lab, market):
    env = market({1: "0.6", 2: "0.5", 3: "0.8"}, client_extra=POLICY, mdns=True)
    assert "[[gateways]]" not in env.client_conf.read_text() and "[gateway]" not in env.client_conf.read_text()
    got = wait_for(lambda: len(env.gateways()) == 3 and all(g["state"] == "up" for g in env.gateways()), 20)
    assert got, dump(env.gateways())
    assert {g["source"] for g in env.gateways()} == {"mdns"}, dump(env.gateways())
    assert wait_for(lambda: env.carrier() == "gw2", 10), dump(env.gateways())
    assert replies(ping(market_lab, UP).stdout), "no reply through the gateway found over mDNS"
    assert wait_for(lambda: env.carrier(f"{UP}/32") == "gw2", 10), dump(env.gateways())
    contracts = env.request("client", "contracts")
    assert contracts and {c["gateway"] for c in contracts} == {env.public[2]}, dump(contracts)


def test_an_advert_whose_key_completes_no_handshake_stays_unverified_and_carries_nothing(market_lab, market):
    env = market({1: "0.6", 2: "0.8"}, client_extra=POLICY, mdns=True)
    # a third "gateway" in gw3's namespace: a valid signed advert, far cheaper, for an
    # endpoint where nothing listens (no daemon: the handshake never completes)
    key = secrets.token_bytes(32)
    fake = market_lab.popen("gw3", sys.executable, "-c", ANNOUNCE, key.hex(), "ok", "fake",
                            f"{market_gateway(3)['link']}:{PORT}", "60", "1",
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout.readline().strip() == "up"
        assert wait_for(lambda: len(env.gateways()) == 3, 20), dump(env.gateways())
        assert replies(ping(market_lab, UP, count=10).stdout), "no reply through the real gateways"
        time.sleep(1)         # probes and choices past the first
        gws = {g["label"]: g for g in cli_gateways(market_lab, env)}
        assert gws["fake"]["state"] == "unverified" and gws["fake"]["destinations"] == [], dump(gws)
        assert gws["gw1"]["state"] == "up" and f"{UP}/32" in gws["gw1"]["destinations"], dump(gws)
        contracts = env.request("client", "contracts", all=True)
        assert contracts and all(c["gateway"] == env.public[1] for c in contracts), dump(contracts)
    finally:
        fake.terminate()
        fake.wait(5)


def test_ipv6_destinations_are_chosen_and_fail_over(market_lab, market):
    env = market({1: "0.5", 2: "0.6", 3: "0.8"}, client_extra=POLICY, ipv6=True)
    assert wait_for(lambda: len(env.gateways()) == 3 and all(g["state"] == "up" for g in env.gateways()), 15), \
        dump(env.gateways())
    assert wait_for(lambda: env.carrier("::/0") == "gw1", 10), dump(env.gateways())
    assert replies(ping(market_lab, UP6).stdout), "no IPv6 reply through the cheapest gateway"
    assert wait_for(lambda: env.carrier(f"{UP6}/128") == "gw1", 10), dump(env.gateways())
    p = market_lab.popen("client", "ping", "-n", "-i", "0.05", "-c", "160", "-W", "1", UP6,
                         stdout=subprocess.PIPE, text=True)
    time.sleep(3)
    env.kill9("gw1")
    out, _ = p.communicate(timeout=30)
    got = replies(out)
    assert got and max(got) > 120, out[-2000:]          # replies resumed after the kill (seq ~60)
    assert env.carrier(f"{UP6}/128") == "gw2" and env.carrier("::/0") == "gw2", dump(env.gateways())
    contracts = env.request("client", "contracts", all=True)
    assert any(c["gateway"] == env.public[2] and c["destination"] == f"{UP6}/128" for c in contracts), \
        dump(contracts)
