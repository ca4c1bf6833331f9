"""Contracts end to end (issue 3): real daemons, real traffic, the `dummy` payment backend.

Each test builds its own lab (client / gw / up namespaces, ~1 s) and drives `tunnelgate serve`
and `tunnelgate up` through the CLI.  What the daemons say is read from `status --json` and
from their control sockets (`contracts` with `all`, `events`); payments from their SQLite files.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time

import pytest

from payments_helpers import make_env  # noqa: F401  (a fixture: tests take it by name)
from tgenv import TunnelEnv, ping, wait_until
from tunnelgate.daemon.control import request
from tglab.lab import UPSTREAM
from tunnelgate.money import parse_price
from tunnelgate.net import nft

pytestmark = pytest.mark.root

MTU = 1420                 # the tunnel MTU (config default): no inner IP packet is longer
DST = UPSTREAM             # host scope: the destination of every contract here


# --- helpers ------------------------------------------------------------------------------

def ctl(env: TunnelEnv, which: str, cmd: str, **args):
    return request(env.dir / ("gw" if which == "gw" else "cl") / "control.sock", cmd, **args)


def contracts(env: TunnelEnv, which: str, dst: str = DST) -> list[dict]:
    """Every contract this run knows for dst, live and ended."""
    return [c for c in ctl(env, which, "contracts", all=True) if c["destination"] in (dst, f"{dst}/32")]


def events(env: TunnelEnv, which: str, kind: str | None = None) -> list[dict]:
    return [e for e in ctl(env, which, "events") if kind is None or e["kind"] == kind]


def totals(env: TunnelEnv, which: str) -> tuple[int, int]:
    cs = contracts(env, which)
    return sum(c["up"] for c in cs), sum(c["down"] for c in cs)


def gw_peer(env: TunnelEnv) -> dict:
    [peer] = env.status("gw")["market"]["peers"].values()
    return peer


def live(env: TunnelEnv, which: str) -> list[dict]:
    return [c for c in contracts(env, which) if c["state"] in ("GRACE", "PAID", "ACCEPTED")]


def client_payments(env: TunnelEnv) -> list[tuple]:
    with sqlite3.connect(env.dir / "cl" / "tunnelgate.db") as db:
        return db.execute("SELECT contract_id, amount_msat, state FROM client_payments").fetchall()


def gateway_payments(env: TunnelEnv) -> list[tuple]:
    """The dummy payee's journal: (contract_id, amount_msat, status)."""
    path = env.dir / "gw" / "payments.sqlite"
    with sqlite3.connect(path) as db:
        return db.execute("SELECT contract_id, amount_msat, status FROM payments").fetchall()


def ping_times(output: str) -> list[float]:
    """Wall-clock times of the replies of `ping -D`."""
    return [float(t) for t in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", output, re.M)]


def fetch(lab, path: str, max_time: float, extra: tuple = ()) -> tuple[int, str, float]:
    """(curl exit status, sha256 of what arrived, seconds it took)."""
    t0 = time.monotonic()
    r = lab.run(lab.client, "bash", "-c",
                f"set -o pipefail; curl -sS --max-time {max_time} {' '.join(extra)} "
                f"http://{UPSTREAM}:8080/{path} | sha256sum",
                check=False, timeout=max_time + 15)
    return r.returncode, (r.stdout.split() or [""])[0], time.monotonic() - t0


# --- 1. negotiation -------------------------------------------------------------------------

NEGOTIATION = {
    # name: (gateway [pricing], client [policy]; expected contract price or None for no deal)
    "accept": ('default_price = "0.5"', 'max_price = "1"', "0.5"),
    "counter_met": ('default_price = "1"\nfloor_price = "0.5"', 'max_price = "0.8"\ncounter_fraction = "0.8"',
                    "0.8"),
    "counter_below_floor": ('default_price = "1"\nfloor_price = "0.9"', 'max_price = "0.5"', None),
    # a contract costs 0.5 msat/KB x 10 000 KB = 5000 msat, more than the whole budget
    "budget": ('default_price = "0.5"\ncontract_kb = 10000', 'max_price = "1"\nmax_spend_total = 1000', None),
}


@pytest.mark.parametrize("case", list(NEGOTIATION))
def test_negotiation(lab, make_env, case):
    pricing, policy, price = NEGOTIATION[case]
    lab.start_upstream({})
    env = make_env(gateway=f"[pricing]\n{pricing}\n", client=f"[policy]\n{policy}\n")
    env.serve()
    env.up()
    r = ping(lab, lab.client, count=4, interval=0.3)
    gw, cl = env.status("gw"), env.status("client")
    if price is not None:
        assert r.returncode == 0, r.stdout + env.logs()
        [c] = live(env, "gw")
        assert c["price"] == parse_price(price)
        assert wait_until(lambda: live(env, "gw")[0]["state"] == "PAID", 3), contracts(env, "gw")
        [cc] = live(env, "client")
        assert cc["contract_id"] == c["contract_id"] and cc["price"] == c["price"]
        assert wait_until(lambda: live(env, "client")[0]["state"] == "PAID", 3)
        if case == "counter_met":
            rejected = events(env, "gw", "rejected")
            assert rejected and rejected[0]["data"]["counter_price"] == parse_price("0.8")
            assert c["round"] == 2
        assert [p[0] for p in client_payments(env)] == [c["contract_id"]]
        return
    # no deal: nothing forwarded, both sides say why
    assert "bytes from" not in r.stdout, r.stdout
    assert gw["stats"].get("rx_packets", 0) == 0 and gw["stats"].get("tx_packets", 0) == 0
    assert gw["stats"].get("released", 0) == 0
    assert not live(env, "gw")
    [peer] = gw["market"]["peers"].values()
    why_gw = peer["no_deal"][DST if DST in peer["no_deal"] else f"{DST}/32"]["reason"]
    dest = cl["market"]["destinations"]
    why_cl = next(iter(dest.values()))["no_deal_reason"]
    if case == "counter_below_floor":
        assert "below the floor price 0.9" in why_gw, why_gw
        assert "below the floor price 0.9" in why_cl, why_cl
        assert [e["data"]["counter_price"] for e in events(env, "gw", "rejected")] == [parse_price("0.5")] * 2
    else:
        assert "total budget" in cl["market"]["budget_reason"], cl["market"]
        assert "5 sat" in cl["market"]["budget_reason"] or "5000" in cl["market"]["budget_reason"]
        assert "total budget" in why_gw and "total budget" in why_cl, (why_gw, why_cl)
        assert events(env, "client", "budget_exceeded")
        assert cl["market"]["spend"]["total"] == 0
    assert client_payments(env) == []


# --- 2. exact metering ----------------------------------------------------------------------

def test_metering_client_gateway_and_wire_agree(lab, make_env):
    files = lab.start_upstream({"2M.bin": 2_000_000})
    # one packet per skb on the upstream link, so nft counts the packets the tunnel carries
    # (TSO would hand the gateway 64 KB super-packets that it counts with one header)
    lab.run(lab.up, "ip", "link", "set", "dev", "veth0", "gso_max_segs", "1")
    lab.run(lab.gw, "ip", "link", "set", "dev", "veth-up", "gso_max_segs", "1")
    env = make_env(gateway="[pricing]\ncontract_kb = 100000\n")
    env.serve()
    env.up()
    table = nft.counter_table("tgtest_meter", "veth-up", netns=lab.ns(lab.gw))
    # the first packet to a destination is held by the gateway, which meters it when it
    # releases it, while the client had no contract to meter it against: start the contract
    # with a ping, then compare what happens from a quiet baseline on
    assert ping(lab, lab.client, count=2).returncode == 0
    time.sleep(1.5)
    base = {"client": totals(env, "client"), "gw": totals(env, "gw"),
            "nft": nft.read_counters(table, netns=lab.ns(lab.gw))}

    rc, got, _ = fetch(lab, "2M.bin", 30)
    assert rc == 0 and got == files["2M.bin"]
    # the upload: 1 MB in UDP datagrams.  Not a TCP upload: the gateway writes in-order TCP
    # segments to its TUN coalesced into one GSO frame, which the kernel forwards (and nft
    # counts, before it is segmented on transmit) as one packet with one header
    lab.run(lab.client, "python3", "-c",
            "import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for i in range(1000):\n"
            f"    s.sendto(bytes(1000), ('{UPSTREAM}', 9)); time.sleep(0.0005)", timeout=30)
    time.sleep(2.5)            # past the usage interval (1 s) and the snapshot (1 s)

    cl, gw = totals(env, "client"), totals(env, "gw")
    n = nft.read_counters(table, netns=lab.ns(lab.gw))
    d_cl = (cl[0] - base["client"][0], cl[1] - base["client"][1])
    d_gw = (gw[0] - base["gw"][0], gw[1] - base["gw"][1])
    d_nft = (n["tx_bytes"] - base["nft"]["tx_bytes"], n["rx_bytes"] - base["nft"]["rx_bytes"])
    report = f"up/down: client {d_cl}, gateway {d_gw}, nft on veth-up {d_nft}"
    print(report)
    assert d_cl[0] > 1_028_000 and d_cl[1] > 2_000_000, report
    # the same packets pass all three counters; allow one packet in flight per direction
    for i in (0, 1):
        assert abs(d_cl[i] - d_gw[i]) <= MTU, report
        assert abs(d_gw[i] - d_nft[i]) <= MTU, report
        assert abs(d_cl[i] - d_nft[i]) <= MTU, report
    # the client heard the gateway's count and found no disagreement
    assert not events(env, "client", "usage_mismatch")


# --- 3. limits without renewal --------------------------------------------------------------

NO_RENEWAL = "data_renewal_kb = 0\ntime_renewal_s = 0\n"


def test_data_limit_stops_download_within_one_packet(lab, make_env):
    lab.start_upstream({"2M.bin": 2_000_000})
    # 200 KB at 0.5 msat/KB = 100 msat; the budget is one contract, so the gateway's proposal
    # for a next one (the client's traffic goes on) is declined: the download must stop
    env = make_env(gateway="[pricing]\ncontract_kb = 200\ndefault_price = \"0.5\"\n",
                   client=f"[policy]\n{NO_RENEWAL}max_spend_total = 100\n")
    env.serve()
    env.up()
    rc, got, took = fetch(lab, "2M.bin", 6, ("--speed-time", "3", "--speed-limit", "1000"))
    assert rc != 0, "the download completed past a 200 KB contract"
    cs = contracts(env, "gw")
    [c] = [c for c in cs if c["state"] == "EXHAUSTED"]
    assert 200_000 <= c["used"] <= 200_000 + MTU, c
    assert not live(env, "gw")
    # the client never asked for a renewal
    assert not events(env, "client", "renewal_requested")
    assert len(client_payments(env)) == 1


def test_expiry_stops_traffic_at_expiry(lab, make_env):
    lab.start_upstream({})
    env = make_env(gateway="[pricing]\ncontract_time_s = 3\ncontract_kb = 10000\n",
                   client=f"[policy]\n{NO_RENEWAL}max_spend_total = 5000\n")
    env.serve()
    env.up()
    r = ping(lab, lab.client, count=30, interval=0.2, wait=0.5, extra=("-D",))
    times = ping_times(r.stdout)
    assert times, r.stdout
    [c] = [c for c in contracts(env, "gw") if c["state"] not in ("REJECTED", "NO_DEAL")]
    assert c["state"] == "EXPIRED", c
    [accepted] = events(env, "gw", "accepted")
    [expired] = events(env, "gw", "expired")
    expiry = accepted["ts"] + 3
    assert abs(expired["ts"] - expiry) < 0.3
    # a ping every 0.2 s: the last reply comes within 0.2 s before the expiry, none after
    assert expiry - 0.5 <= times[-1] <= expiry + 0.5, (times[-1] - expiry, r.stdout)
    assert len(times) <= 3 / 0.2 + 2
    assert not events(env, "client", "renewal_requested")


# --- 4. renewal ----------------------------------------------------------------------------

def test_renewal_chains_tiny_contracts_without_loss_or_stall(lab, make_env):
    files = lab.start_upstream({"20M.bin": 20_000_000})
    # max_contract_kb = contract_kb: the contracts stay tiny however fast the flow (no sizing)
    env = make_env(gateway="[pricing]\ncontract_time_s = 5\ncontract_kb = 100\nmax_contract_kb = 100\n"
                           "grace_kb = 100\n",
                   client="[policy]\ndata_renewal_kb = 60\ntime_renewal_s = 3\n")
    env.serve()
    env.up()
    pinger = lab.popen(lab.client, "ping", "-n", "-D", "-i", "0.2", "-c", "150", "-W", "1", UPSTREAM,
                       stdout=subprocess.PIPE, text=True)
    time.sleep(8)                              # a few time-based renewals first
    rc, got, took = fetch(lab, "20M.bin", 40, ("--speed-time", "2", "--speed-limit", "100000"))
    out, _ = pinger.communicate(timeout=40)
    assert rc == 0 and got == files["20M.bin"], f"curl {rc} after {took:.1f} s\n{env.logs()}"
    sent = int(re.search(r"(\d+) packets transmitted", out).group(1))
    received = int(re.search(r"(\d+) received", out).group(1))
    assert sent == 150 and sent - received <= 1, out[-500:]
    cs = contracts(env, "gw")
    ended = [c for c in cs if c["state"] in ("EXHAUSTED", "EXPIRED")]
    print(f"20 MB in {took:.1f} s; {len(cs)} contracts, {len(ended)} ended")
    assert len(ended) >= 30
    assert all(c["paid"] for c in ended)
    assert not [c for c in cs if c["state"] == "REVOKED"]


def test_a_fast_flow_buys_bigger_contracts_up_to_the_gateways_bound(lab, make_env):
    files = lab.start_upstream({"20M.bin": 20_000_000})
    env = make_env(gateway="[pricing]\ncontract_kb = 100\nmax_contract_kb = 3000\n")
    env.serve()
    env.up()
    assert "sized" in env.status("client")["gateway_features"]
    rc, got, took = fetch(lab, "20M.bin", 40)
    assert rc == 0 and got == files["20M.bin"], f"curl {rc} after {took:.1f} s\n{env.logs()}"
    cs = contracts(env, "gw")
    sizes = [c["limit_kb"] for c in cs]
    # 100 KB first, then growing (at most 4x a step) to the bound: far fewer than 200 contracts
    assert min(sizes) == 100 and max(sizes) == 3000 and len(cs) < 40, sizes
    assert all(c["paid"] for c in cs if c["state"] in ("EXHAUSTED", "EXPIRED"))
    asked = [e["data"]["limit_kb"] for e in events(env, "client", "renewal_requested") if e["data"].get("limit_kb")]
    assert asked, "no sized request"


# --- 5. a client that stops paying / stops altogether ---------------------------------------

def test_client_that_does_not_pay_loses_service_after_grace(lab, make_env):
    lab.start_upstream({})
    env = make_env(gateway="[pricing]\ngrace_time_s = 3\ngrace_kb = 1000\n",
                   client='[payment]\nbackend = "dummy"\nbalance_msat = 0\n')
    env.serve()
    env.up()
    r = ping(lab, lab.client, count=30, interval=0.2, wait=0.5, extra=("-D",))
    times = ping_times(r.stdout)
    assert times, "no traffic during grace\n" + r.stdout
    [accepted] = events(env, "gw", "accepted")[:1]
    cid = accepted["contract_id"]
    grace_end = accepted["ts"] + 3
    assert times[-1] <= grace_end + 0.5 and times[-1] >= grace_end - 0.5, (times[-1] - grace_end)
    c = next(c for c in contracts(env, "gw") if c["contract_id"] == cid)
    assert c["state"] == "REVOKED" and "grace" in c["reason"], c
    assert not c["paid"]
    failed = events(env, "client", "payment_failed")
    assert failed and "insufficient funds" in failed[0]["reason"]
    assert not gw_peer(env)["grace"]
    # the next contract: no grace at all, nothing flows
    before = env.status("gw")["stats"]
    r2 = ping(lab, lab.client, count=10, interval=0.2, wait=0.5)
    assert "bytes from" not in r2.stdout, r2.stdout
    after = env.status("gw")
    for k in ("rx_packets", "tx_packets", "released"):
        assert after["stats"].get(k, 0) == before.get(k, 0), (k, before, after["stats"])
    # the client stopped buying after its payment failed for lack of funds (issue 4): later
    # offers go unanswered (or, before it knew, are accepted without grace); none is used
    later = [c for c in contracts(env, "gw") if c["contract_id"] != cid]
    assert later and all(c["used"] == 0 and not c["paid"] for c in later), later
    assert all(c["state"] in ("ACCEPTED", "REVOKED", "PROPOSED", "NO_DEAL") for c in later), later
    assert events(env, "client", "no_funds")
    assert gateway_payments(env) == []


def test_killed_client_contract_ends_at_its_limit(lab, make_env):
    lab.start_upstream({})
    env = make_env(gateway="[pricing]\ncontract_time_s = 4\n",
                   client=f"[policy]\n{NO_RENEWAL}")
    env.serve()
    env.up()
    assert ping(lab, lab.client, count=2).returncode == 0
    [c] = contracts(env, "gw")
    env.kill9("client")
    assert wait_until(lambda: contracts(env, "gw")[0]["state"] == "EXPIRED", 6), contracts(env, "gw")
    stats = env.status("gw")["stats"]
    time.sleep(1.5)
    assert env.status("gw")["stats"] == stats
    assert not live(env, "gw")
    assert len(contracts(env, "gw")) == 1


# --- 6. restarts ------------------------------------------------------------------------------

def test_gateway_kill9_resumes_contract_without_paying_again(lab, make_env):
    files = lab.start_upstream({"1M.bin": 1_000_000})
    env = make_env()
    env.serve()
    env.up()
    assert ping(lab, lab.client, count=2).returncode == 0
    rc, got, _ = fetch(lab, "1M.bin", 20)
    assert rc == 0
    time.sleep(1.5)                                # saved (every second)
    [c] = contracts(env, "gw")
    assert c["state"] == "PAID"
    paid_before = gw_peer(env)["paid_contracts"]
    env.kill9("gw")
    env.serve()
    assert wait_until(lambda: ping(lab, lab.client, count=1, wait=0.5).returncode == 0, 8)
    [c2] = contracts(env, "gw")
    [cc] = contracts(env, "client")
    assert c2["contract_id"] == c["contract_id"] == cc["contract_id"]
    assert c2["state"] == "PAID"
    assert c["used"] <= c2["used"] <= cc["used"] + MTU, (c, c2, cc)
    rc, got, _ = fetch(lab, "1M.bin", 20)
    assert rc == 0 and got == files["1M.bin"]
    time.sleep(1.5)
    [c3] = contracts(env, "gw")
    assert c3["contract_id"] == c["contract_id"] and c3["used"] > c2["used"] + 1_000_000
    assert gw_peer(env)["paid_contracts"] == paid_before
    assert [p[0] for p in client_payments(env)] == [c["contract_id"]]
    assert [p[0] for p in gateway_payments(env)] == [c["contract_id"]]


def test_client_kill9_resumes_contracts_from_its_database(lab, make_env):
    files = lab.start_upstream({"1M.bin": 1_000_000})
    env = make_env()
    env.serve()
    env.up()
    assert ping(lab, lab.client, count=2).returncode == 0
    rc, got, _ = fetch(lab, "1M.bin", 20)
    assert rc == 0
    time.sleep(1.5)
    [cc] = contracts(env, "client")
    assert cc["state"] == "PAID"
    env.kill9("client")
    env.up()
    [cc2] = contracts(env, "client")
    assert cc2["contract_id"] == cc["contract_id"] and cc2["used"] >= cc["used"] - 0
    rc, got, _ = fetch(lab, "1M.bin", 20)
    assert rc == 0 and got == files["1M.bin"]
    time.sleep(1.5)
    [c] = contracts(env, "gw")
    assert c["contract_id"] == cc["contract_id"]
    [cc3] = contracts(env, "client")
    assert cc3["contract_id"] == cc["contract_id"] and cc3["used"] > cc["used"] + 1_000_000
    assert [p[0] for p in client_payments(env)] == [cc["contract_id"]]
    assert [p[0] for p in gateway_payments(env)] == [cc["contract_id"]]
    assert gw_peer(env)["paid_contracts"] == 1
