"""Relays end to end (docs/relay.md): topology.chain in real namespaces, client — relay —
gateway — upstream (and one more relay for three hops), the daemons started by the CLI,
the dummy payment backend: a download through the chain, the chain in the client's quote,
the money at each hop, and what downstream sees when the upstream stops selling."""

from __future__ import annotations

import base64
import json
import subprocess
import time

import pytest

from tglab.lab import Lab
from tglab.market_env import dump, wait_for
from tglab.relay_env import RelayEnv
from tglab.topology import UPSTREAM, UPSTREAM6, chain
from tunnelgate import money
from tunnelgate.protocol.relay_pricer import RelayPricer

from conftest import new_prefix, root_skip_reason

pytestmark = pytest.mark.root
DEST = f"{UPSTREAM}/32"


def chain_lab(relays: int, spare: bool = False, alt: bool = False):
    reason = root_skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab(new_prefix(), chain(relays, spare, alt))
    lab.build()
    return lab


@pytest.fixture
def relay_env():
    made = []

    def make(relays: int = 1, files: dict | None = None, **kw):
        lab = chain_lab(relays, kw.get("spare_price") is not None, kw.get("alt_price") is not None)
        env = RelayEnv(lab, relays, **kw)
        made.append((lab, env))
        sums = lab.start_upstream(files or {})
        env.start()
        return lab, env, sums
    yield make
    for lab, env in made:
        print(env.logs())
        env.close()
        lab.destroy()


def download(lab, name: str, timeout: float = 120) -> str:
    return lab.run("client", "sh", "-c", f"curl -sS --max-time {timeout} http://{UPSTREAM}:8080/{name} | sha256sum",
                   timeout=timeout + 10).stdout.split()[0]


def mark_up(price: int, margin: str = "0.25") -> int:
    return RelayPricer(None, margin).mark_up(price)


def events(env, name: str, kind: str) -> list[dict]:
    return [e for e in env.request(name, "events") if e["kind"] == kind]


def test_two_hops_download_chain_and_money(relay_env):
    lab, env, sums = relay_env(1, {"20M.bin": 20_000_000})
    assert download(lab, "20M.bin") == sums["20M.bin"]
    gw_price = money.parse_price("0.5")
    quote = env.request("client", "quote", destination=UPSTREAM)
    assert [(h["public_key"], h["price_per_kb"]) for h in quote["chain"]] == [
        (env.public["gw"], gw_price), (env.public["relay1"], mark_up(gw_price))], dump(quote)
    assert quote["price"] == mark_up(gw_price) and not quote["chain_problem"]
    # the gateway was paid by the relay (its key) for what it carried
    paid = [c for c in env.history("gw") if c["paid_msat"] and c["peer"] == env.public["relay1"]]
    assert sum(c["paid_msat"] for c in paid) >= money.cost_msat(gw_price, 20_000), dump(paid)
    # the relay's money: what it sold downstream at cost × 1.25 covers what was used of it
    st = env.status("relay1")
    total = st["relay"]["money"]["total"]
    down = [c for c in env.request("relay1", "contracts", all=True) if c["destination"] == DEST]
    used_kb = sum(c["used"] for c in down) // 1000
    assert used_kb >= 20_000, dump(down)
    assert total["revenue_msat"] >= money.cost_msat(mark_up(gw_price), used_kb) - 1, dump(total)
    assert total["cost_msat"] >= money.cost_msat(gw_price, used_kb), dump(total)
    assert st["relay"]["money"]["destinations"][DEST]["revenue_msat"] == total["revenue_msat"]
    hist = env.history("relay1")
    assert hist["resale"]["total"] == total, dump(hist["resale"])
    print("relay money:", dump(total))


def test_the_gateway_refusing_the_relay_stops_downstream_with_a_reason(relay_env):
    # small upstream contracts: the relay must buy again soon, and cannot at the new price
    lab, env, _ = relay_env(1, gw_extra="contract_kb = 100\nmax_contract_kb = 200\n", relay_max="1")
    # ~280 KB/s metered: the upstream quota the relay holds ahead (at most 4 contracts of
    # 200 KB at the gateway) lasts ~3 s
    ping = lab.popen("client", "ping", "-n", "-i", "0.01", "-s", "1400", "-c", "3000", "-W", "1", UPSTREAM,
                     stdout=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: [c for c in env.request("client", "contracts") if c["paid"]], 15), \
            dump(env.request("client", "contracts"))
        # above the relay's max_price, and no counter-offer below it either
        env.tg("gw", "set", "-c", str(env.conf["gw"]), "default_price=5", "floor_price=5")
        changed = time.monotonic()
        # what was bought before is still sold; then what was sold ends (revoked when the upstream
        # quota runs out under it) or the next contract is refused, with the gateway's reason,
        # as soon as the relay asks upstream: not after its buy's 10 s time-out
        refused = wait_for(lambda: [e for e in events(env, "client", "revoked") + events(env, "client", "no_deal")
                                    if e["destination"] == DEST and "no upstream for" in (e["reason"] or "")], 30)
        took = time.monotonic() - changed
        assert refused, dump(env.request("client", "events"))
        reason = refused[0]["reason"]
        assert "below the floor price" in reason and "did not answer" not in reason, dump(refused)
        assert took < 8, f"refused after {took:.1f} s: {reason}"
        print("downstream stopped after", round(took, 1), "s:", refused[0]["kind"], reason)
    finally:
        ping.kill()
        ping.communicate()
    # a new destination: the relay says why it will not sell
    lab.run("client", "ping", "-n", "-c", "2", "-W", "1", "198.18.2.1", check=False, timeout=20)
    nd = wait_for(lambda: [e for e in events(env, "client", "no_deal") if "no upstream for" in (e["reason"] or "")], 15)
    assert nd, dump(env.request("client", "events"))


def test_kill9_of_the_gateway_ends_the_relayed_contracts_and_its_restart_serves_again(relay_env):
    lab, env, _ = relay_env(1)
    ping = lab.popen("client", "ping", "-n", "-i", "0.05", "-c", "400", "-W", "1", UPSTREAM,
                     stdout=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: [c for c in env.request("client", "contracts") if c["paid"]], 15)
        env.kill9("gw")
        killed = time.monotonic()
        ended = wait_for(lambda: [e for e in events(env, "client", "revoked") if "upstream gateway gone" in
                                  (e["reason"] or "")], 30)
        assert ended, dump(env.request("client", "events"))
        took = time.monotonic() - killed
        grace = env.status("relay1")["pricing"]["grace_time_s"]
        assert took < grace, f"stopped after {took:.1f} s, grace is {grace} s"
        print("downstream stopped", round(took, 1), "s after kill -9:", ended[0]["reason"])
    finally:
        ping.kill()
        ping.communicate()
    assert env.status("relay1")["relay"]["gone"] == [env.public["gw"]]
    # the gateway comes back: the client, told "no upstream" with a back-off of seconds
    # (no_upstream_backoff_s), is sold through the relay again soon after, not a minute later
    def refused():
        lab.run("client", "ping", "-n", "-c", "1", "-W", "1", UPSTREAM, check=False)
        return [e for e in events(env, "client", "no_deal") if "no upstream" in (e["reason"] or "")]
    said = wait_for(refused, 15)
    assert said and all(e["data"]["retry_after_s"] <= 5 for e in said), dump(said)
    env.tg("gw", "serve", "-c", str(env.conf["gw"]))
    back = time.monotonic()
    assert wait_for(lambda: lab.run("client", "ping", "-n", "-c", "1", "-W", "1", UPSTREAM,
                                    check=False).returncode == 0, 40), dump(env.request("client", "events"))
    took = time.monotonic() - back
    print("served again", round(took, 1), "s after the gateway restarted")
    assert took < 20, f"served again only {took:.1f} s after the upstream came back"


def test_kill9_upstream_of_the_relay_moves_the_client_to_its_other_gateway(relay_env):
    # client with two sellers: the relay (0.5 upstream -> 0.625) and gw2 directly (0.9,
    # dearer, within the client's default max_price of 1)
    lab, env, _ = relay_env(1, spare_price="0.9")
    ping = lab.popen("client", "ping", "-n", "-i", "0.05", "-c", "600", "-W", "1", UPSTREAM,
                     stdout=subprocess.PIPE, text=True)
    try:
        def paid_to(name):
            return [c for c in env.request("client", "contracts") if c["paid"] and c["gateway"] == env.public[name]]

        def carries(name):
            return [g for g in env.request("client", "gateways")
                    if g["public_key"] == env.public[name] and DEST in g["destinations"]]
        # D goes through the relay (it may have gone to gw2 first, while the relay was still
        # connecting upstream: it comes back once the relay quotes it as for sale)
        assert wait_for(lambda: paid_to("relay1") and carries("relay1"), 30), dump(env.request("client", "events"))
        env.kill9("gw")
        killed, killed_wall = time.monotonic(), time.time()
        moved = wait_for(lambda: [e for e in env.request("client", "events") if e["kind"] == "destination_moved"
                                  and e["destination"] == DEST and e["ts"] >= killed_wall
                                  and "no upstream for" in (e["reason"] or "")], 30)
        assert moved, dump(env.request("client", "events"))
        took = time.monotonic() - killed
        assert wait_for(lambda: paid_to("gw2") and carries("gw2"), 15), dump(env.request("client", "events"))
        print("moved to gw2", round(took, 1), "s after kill -9:", moved[0]["reason"])
    finally:
        ping.kill()
        ping.communicate()
    # answers come back after the move, through gw2 (the only path left to up), and D stays
    # there while the relay has no upstream (its quotes say so: no move back and forth)
    assert env.status("gw2")["stats"].get("rx_packets", 0) > 0
    lab.run("client", "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", UPSTREAM, timeout=20)
    time.sleep(8)                   # past the relay's NO_DEAL back-off (no_upstream_backoff_s, 5 s)
    assert carries("gw2"), dump(env.request("client", "gateways"))
    flaps = [e for e in env.request("client", "events") if e["kind"] == "destination_moved"
             and e["destination"] == DEST and e["ts"] >= killed_wall and e["data"].get("gateway") == env.public["relay1"]]
    assert not flaps, dump(flaps)
    grace = env.status("relay1")["pricing"]["grace_time_s"]
    assert took < grace, f"moved after {took:.1f} s, the relay's grace is {grace} s"


def test_the_relay_moves_to_its_other_upstream_when_the_one_it_buys_from_dies(relay_env):
    # The relay's [upstream] lists two gateways: gw (0.5, chosen) and gwalt (0.8). When gw
    # dies the relay's own market moves D to gwalt and buys there; the contract it sold
    # stays in force (a promise kept, at a loss), and the next one carries gwalt's chain.
    lab, env, sums = relay_env(1, {"2M.bin": 2_000_000}, alt_price="0.8", relay_extra="contract_kb = 500")
    first = wait_for(lambda: lab.run("client", "ping", "-n", "-c", "1", "-W", "1", UPSTREAM, check=False).returncode == 0
                     and [c for c in env.request("client", "contracts") if c["paid"]], 20)
    assert first, dump(env.request("client", "contracts"))
    assert [h["public_key"] for h in first[0]["chain"]] == [env.public["gw"], env.public["relay1"]], dump(first)
    ping = lab.popen("client", "ping", "-n", "-i", "0.05", "-c", "160", "-W", "1", UPSTREAM,
                     stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        env.kill9("gw")
        out, _ = ping.communicate(timeout=30)          # 8 s of pings, the kill 1 s in
    finally:
        ping.kill()
    # the pings went on through gwalt after a gap (the relay's market noticing the silence;
    # it translates what it forwards to the address gwalt leased it)
    answered = [int(x.split("icmp_seq=")[1].split()[0]) for x in out.splitlines() if "ttl=" in x]
    assert answered and max(answered) >= 150, out[-2000:]
    gap = max(b - a for a, b in zip(answered, answered[1:]))
    print(f"relay upstream failover: {gap} pings of 50 ms lost")
    assert [c for c in env.history("gwalt") if c["paid_msat"] and c["peer"] == env.public["relay1"]]
    # the relay's events show both sides: its own market's move, marked upstream
    evs = env.request("relay1", "events")
    moved = [e for e in evs if e["side"] == "upstream" and e["kind"] == "destination_moved"
             and e["destination"] == DEST and "stopped answering" in (e["reason"] or "")]
    assert moved, dump(evs)
    assert {e["side"] for e in evs} == {"upstream", "downstream"}
    assert not events(env, "client", "revoked"), dump(events(env, "client", "revoked"))
    assert download(lab, "2M.bin") == sums["2M.bin"]
    via_alt = [c for c in env.request("client", "contracts", all=True) if c["paid"] and
               [h["public_key"] for h in c["chain"]] == [env.public["gwalt"], env.public["relay1"]]]
    assert via_alt and via_alt[-1]["price"] == mark_up(money.parse_price("0.8")), dump(via_alt)


def test_ipv6_through_the_relay(relay_env):
    # dual-stack tunnels at each hop: the relay masquerades IPv6 out of its upstream tunnel
    # as it does IPv4, and resells the IPv6 destination with its chain
    lab, env, _ = relay_env(1, {}, ipv6=True)
    lab.run("client", "ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "3", UPSTREAM6, timeout=30)
    out = lab.run("client", "iperf3", "-6", "-c", UPSTREAM6, "-t", "2", "-J", timeout=60).stdout
    end = json.loads(out)["end"]
    assert end["sum_received"]["bytes"] >= 5_000_000, json.dumps({k: end[k] for k in ("sum_sent", "sum_received")})
    dest6 = f"{UPSTREAM6}/128"
    mine = [c for c in env.request("client", "contracts", all=True) if c["destination"] == dest6 and c["paid"]]
    assert mine, dump(env.request("client", "contracts", all=True))
    assert [h["public_key"] for h in mine[0]["chain"]] == [env.public["gw"], env.public["relay1"]]
    bought = [c for c in env.history("gw") if c["destination"] == dest6 and c["peer"] == env.public["relay1"]]
    assert bought and bought[0]["paid_msat"], dump(bought)


def test_relay_killed_and_restarted_keeps_its_ledger_and_sells_again(relay_env):
    lab, env, sums = relay_env(1, {"5M.bin": 5_000_000, "20M.bin": 20_000_000})
    assert download(lab, "5M.bin") == sums["5M.bin"]
    time.sleep(1.5)             # the ledger is saved at the relay's tick

    def money_now():
        return env.status("relay1")["relay"]["money"]["total"]
    before = money_now()
    assert before["revenue_msat"] > 0 and before["cost_msat"] > 0, dump(before)
    env.kill9("relay1")
    env.tg("relay1", "serve", "-c", str(env.conf["relay1"]))
    after = money_now()
    assert after == before, dump({"before": before, "after": after})
    # nothing it sold was stopped by the restart (its upstream contracts came back from disk)
    assert not events(env, "client", "revoked"), dump(events(env, "client", "revoked"))
    # it sells again: the client's next download (beyond the contract left) goes through it,
    # and both sides of the ledger grow from what was kept
    assert wait_for(lambda: download(lab, "20M.bin", timeout=60) == sums["20M.bin"], 90)
    time.sleep(1.5)
    grown = money_now()
    assert grown["revenue_msat"] > before["revenue_msat"] and grown["cost_msat"] > before["cost_msat"], dump(grown)
    assert env.history("relay1")["resale"]["total"] == grown


def test_three_hops_download_and_chain(relay_env):
    lab, env, sums = relay_env(2, {"5M.bin": 5_000_000})
    assert download(lab, "5M.bin") == sums["5M.bin"]
    p0 = money.parse_price("0.5")
    p1 = mark_up(p0)
    quote = env.request("client", "quote", destination=UPSTREAM)
    assert [(h["public_key"], h["price_per_kb"]) for h in quote["chain"]] == [
        (env.public["gw"], p0), (env.public["relay1"], p1), (env.public["relay2"], mark_up(p1))], dump(quote)
    assert base64.b64decode(quote["chain"][-1]["public_key"]) and not quote["chain_problem"]
