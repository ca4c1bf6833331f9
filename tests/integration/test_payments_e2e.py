"""Payments end to end through the tunnel (issue 4): real daemons in a lab, a real Cashu mint
and a real Bitcoin Knots regtest node, started once for this module on 127.0.0.1 of the root
namespace. The daemons reach them at the same 127.0.0.1:PORT inside their own namespaces
through a forwarder in this test process (a listening socket made inside the lab namespace,
connections out of the root namespace): no address or route changes anywhere.

Bad proofs come from a second, fake client built here from tunnelgate.session + protocol (its
UDP socket made inside the client namespace): it asks for a quote (REQUEST), accepts and pays
with a proof we choose. Every refusal comes from the real gateway and the real mint / node.
The bitcoind tests skip only when Knots cannot be fetched (scripts/regtest fetch exit 3).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from payments_helpers import (COST, POLICY, PRICING, FakeClient, client_payments, contracts, ensure_cashu_installed,
                              events, journal, make_env, paid, peer_credit)  # noqa: F401 (make_env: a fixture)
from tgenv import TunnelEnv, ping, wait_until
from tglab.lab import GW_UP, UPSTREAM
from tunnelgate.money import cost_msat, format_msat
from tunnelgate.protocol import messages as m

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]


# --- module fixtures: one mint, one regtest node --------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def arun(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def mint(tmp_path_factory):
    ensure_cashu_installed()
    d = tmp_path_factory.mktemp("mint")
    port = _free_port()
    r = subprocess.run([str(REPO / "scripts/mint"), "start", str(d / "mint"), "--listen", f"127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, f"scripts/mint start failed:\n{r.stdout}\n{r.stderr}"
    try:
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "dir": d}
    finally:
        subprocess.run([str(REPO / "scripts/mint"), "stop", str(d / "mint")], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    regtest = str(REPO / "scripts/regtest")
    r = subprocess.run([regtest, "fetch"], capture_output=True, text=True, timeout=300)
    if r.returncode == 3:
        pytest.skip(f"Bitcoin Knots could not be downloaded from Debian:\n{r.stderr[-2000:]}")
    assert r.returncode == 0, f"scripts/regtest fetch failed:\n{r.stdout}\n{r.stderr}"
    d = tmp_path_factory.mktemp("regtest")
    r = subprocess.run([regtest, "start", str(d)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"scripts/regtest start failed:\n{r.stdout}\n{r.stderr}"
    urls = dict(line.split(None, 1) for line in r.stdout.splitlines()[1:])
    port = int(urls["client"].strip().rsplit(":", 1)[1].split("/")[0])
    try:
        yield {"dir": d, "client": urls["client"].strip(), "gateway": urls["gateway"].strip(), "port": port,
               "mine": lambda n=1: subprocess.run([regtest, "mine", str(d), str(n)], check=True, timeout=60)}
    finally:
        subprocess.run([regtest, "stop", str(d)], capture_output=True, timeout=60)


def cashu_env(make_env, mint, fund_sat: int = 0, client_payment: str = "", gateway: str = PRICING,
              policy: str = POLICY) -> TunnelEnv:
    from tunnelgate.payments import cashu
    env = make_env(ports=(mint["port"],))
    cashu.keygen(str(env.dir / "p2pk.key"))
    env.gw_conf.write_text(env.gw_conf.read_text() + gateway + f"""
[payment]
backend = "cashu"
mints = ["{mint['url']}"]
p2pk_key_file = "p2pk.key"
wallet_dir = "gw-ecash"
""")
    env.client_conf.write_text(env.client_conf.read_text() + policy + f"""
[payment]
backend = "cashu"
mint_url = "{mint['url']}"
wallet_dir = "ecash"
{client_payment}
""")
    if fund_sat:
        assert arun(cashu.fund(str(env.dir / "ecash"), fund_sat, mint["url"])) == fund_sat
    return env


# on chain a contract must be above dust: 2000 KB at 1000 msat/KB = 2000 sat
BTC_PRICING = PRICING.replace('default_price = "1"', 'default_price = "1000"')
BTC_POLICY = POLICY.replace('"2"', '"2000"')


def bitcoind_env(make_env, node, min_conf: int, gateway: str = BTC_PRICING) -> TunnelEnv:
    env = make_env(ports=(node["port"],))
    env.gw_conf.write_text(env.gw_conf.read_text() + gateway + f"""
[payment]
backend = "bitcoind"
rpc_url = "{node['gateway']}"
min_confirmations = {min_conf}
""")
    env.client_conf.write_text(env.client_conf.read_text() + BTC_POLICY + f"""
[payment]
backend = "bitcoind"
rpc_url = "{node['client']}"
""")
    return env


# --- cashu ------------------------------------------------------------------------------------

def test_cashu_contract_paid_balance_in_status_low_balance_warned_once(lab, make_env, mint):
    lab.start_upstream({})
    env = cashu_env(make_env, mint, fund_sat=20, client_payment="low_balance_msat = 19000")
    env.serve(timeout=60)
    env.up(timeout=60)
    assert ping(lab, lab.client, count=3).returncode == 0, env.logs()
    assert wait_until(lambda: len(paid(env, "gw", UPSTREAM)) == 1, 10), contracts(env, "gw")
    [c] = paid(env, "gw", UPSTREAM)
    assert wait_until(lambda: paid(env, "client", UPSTREAM), 5)
    # the gateway swapped a 2 sat token at the mint and recorded it, applied
    assert journal(env, "SELECT contract_id, backend, amount_msat, status, applied FROM payments") == [
        (c["contract_id"], "cashu", COST, "confirmed", 1)]
    # the wallet's balance in status; below low_balance_msat: one warning, not one per check
    assert wait_until(lambda: (env.status("client")["wallet"] or {}).get("balance_msat") == 18000, 15)
    assert env.status("client")["wallet"]["low_balance"] is True
    time.sleep(5.5)                          # another balance check: no second warning
    assert len(events(env, "client", "low_balance")) == 1


def test_cashu_spent_token_and_underpayment_refused_then_revoked(lab, make_env, mint, tmp_path):
    """A token already swapped at the mint, and a token worth less than the contract, sent by a
    fake client: the gateway refuses both (the mint says spent / the amount is short) and
    revokes each contract when grace ends."""
    from tunnelgate.payments import Terms, load_backend
    lab.start_upstream({})
    env = cashu_env(make_env, mint)
    env.serve(timeout=60)
    fake = FakeClient(lab, env.gw_public)
    try:
        p1, p2 = fake.quote(f"{UPSTREAM}/32"), fake.quote(f"{GW_UP}/32")
        cost = cost_msat(p1.price, p1.limit_kb)
        assert cost == COST
        thief = str(tmp_path / "thief")
        from tunnelgate.payments import cashu
        arun(cashu.fund(thief, 10, mint["url"]))

        async def tokens():
            payer = load_backend("cashu", {"wallet_dir": thief, "mint_url": mint["url"]})
            spent = await payer.pay(Terms(p1.contract_id, cost, account=p1.account))
            short = await payer.pay(Terms(p2.contract_id, cost // 2, account=p2.account))
            # someone holding the gateway's key swaps the first token before it arrives
            other = load_backend("cashu", {"mints": [mint["url"]], "p2pk_key_file": str(env.dir / "p2pk.key"),
                                           "wallet_dir": str(tmp_path / "other")},
                                 role="payee", journal=tmp_path / "other.sqlite")
            assert (await other.verify(spent, Terms(p1.contract_id, cost))).ok
            assert (await other.poll(p1.contract_id)).status == "confirmed"
            return spent, short
        spent, short = arun(tokens())
        for p, token in ((p1, spent), (p2, short)):
            fake.send(m.Accept(p.contract_id))
            fake.send(m.Pay(p.contract_id, cost, "cashu", token))
        assert fake.run(lambda: fake.first(m.PaymentFailed, contract_id=p1.contract_id)
                        and fake.first(m.PaymentFailed, contract_id=p2.contract_id), 15), fake.got
        assert "spent" in fake.first(m.PaymentFailed, contract_id=p1.contract_id).reason
        assert "underpaid" in fake.first(m.PaymentFailed, contract_id=p2.contract_id).reason
        assert fake.run(lambda: fake.first(m.Revoke, contract_id=p1.contract_id)
                        and fake.first(m.Revoke, contract_id=p2.contract_id), 10), fake.got
        assert "grace" in fake.first(m.Revoke, contract_id=p1.contract_id).reason
        assert not fake.first(m.Paid)
        assert all(not c["paid"] and c["state"] == "REVOKED" for c in contracts(env, "gw"))
        assert journal(env, "SELECT COUNT(*) FROM payments WHERE status='confirmed'") == [(0,)]
    finally:
        fake.close()


def test_cashu_empty_wallet_grace_once_then_nothing_until_funded(lab, make_env, mint):
    lab.start_upstream({})
    env = cashu_env(make_env, mint)
    from tunnelgate.payments import cashu
    arun(cashu._balance(str(env.dir / "ecash"), mint["url"]))      # an empty wallet of that mint
    env.serve(timeout=60)
    env.up(timeout=60)
    ping(lab, lab.client, count=25, interval=0.2, wait=0.5)
    gw = contracts(env, "gw", UPSTREAM)
    graced = [c for c in gw if c["state"] == "REVOKED" and "grace" in c["reason"]]
    assert len(graced) <= 1 and not paid(env, "gw"), gw
    assert wait_until(lambda: events(env, "client", "no_funds"), 10), events(env, "client")
    assert "insufficient funds" in env.status("client")["market"]["no_funds_reason"]
    # then nothing: no traffic, no contract in use
    r = ping(lab, lab.client, count=5, interval=0.2, wait=0.5)
    assert "bytes from" not in r.stdout, r.stdout
    assert not any(c["state"] in ("GRACE", "PAID") for c in contracts(env, "gw"))
    # funded: buying resumes (the client checks its wallet every 5 s)
    arun(cashu.fund(str(env.dir / "ecash"), 20, mint["url"]))
    assert wait_until(lambda: ping(lab, lab.client, count=1, wait=1).returncode == 0, 30), env.logs()
    assert events(env, "client", "funds_restored")
    assert len(paid(env, "gw", UPSTREAM)) >= 1


def test_gateway_killed_after_payment_received_keeps_the_payment(lab, make_env, mint):
    lab.start_upstream({})
    env = cashu_env(make_env, mint, fund_sat=20)
    env.serve(timeout=60)
    env.up(timeout=60)
    pinger = lab.popen(lab.client, "ping", "-n", "-c", "1", "-W", "2", UPSTREAM,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: events(env, "gw", "payment_received"), 15, step=0.02), env.logs()
        env.kill9("gw")
    finally:
        pinger.wait(timeout=10)
    [(cid, _, amount)] = client_payments(env)
    env.serve(timeout=60)
    # the client's new session re-sends the proof; the journal knows it: one payment, applied
    # to the contract (restored from the snapshot) or, if the contract was lost, kept as credit
    def settled():
        rows = journal(env, "SELECT status, applied FROM payments WHERE contract_id=?", cid)
        return rows == [("confirmed", 1)] and (
            any(c["contract_id"] == cid and c["paid"] for c in contracts(env, "gw")) or peer_credit(env) == amount)
    assert wait_until(settled, 20), (journal(env, "SELECT * FROM payments"), contracts(env, "gw"), env.logs())
    assert len(client_payments(env)) == 1
    assert wait_until(lambda: (env.status("client")["wallet"] or {}).get("balance_msat") == 18000, 15)
    # and service goes on (a lost contract's payment stays credit for a later contract)
    assert wait_until(lambda: ping(lab, lab.client, count=1, wait=1).returncode == 0, 15), env.logs()
    assert journal(env, "SELECT COUNT(*) FROM payments WHERE contract_id=?", cid) == [(1,)]


def test_prepaid_credit_pays_several_contracts_with_one_payment(lab, make_env, mint):
    lab.start_upstream({})
    pricing = PRICING.replace("contract_kb = 2000", "contract_kb = 20").replace('"1"', '"100"')
    env = cashu_env(make_env, mint, fund_sat=50, client_payment="prepay_msat = 10000", gateway=pricing,
                    policy=POLICY.replace('"2"', '"200"'))
    env.serve(timeout=60)
    env.up(timeout=60)
    # 20 KB per contract (2000 msat): ~60 KB of pings is three contracts or more
    r = ping(lab, lab.client, count=25, interval=0.1, wait=1, extra=("-s", "1200"))
    assert r.returncode == 0 or "bytes from" in r.stdout, env.logs()
    assert wait_until(lambda: len(paid(env, "gw", UPSTREAM)) >= 3, 10), contracts(env, "gw")
    gw_paid = paid(env, "gw", UPSTREAM)
    assert sum(c["credit"] for c in gw_paid) >= 2, gw_paid
    # one payment of 10 sat, in the client's records and the gateway's journal
    [(cid, _, amount)] = client_payments(env)
    assert amount == 10000
    assert journal(env, "SELECT amount_msat, status FROM payments") == [(10000, "confirmed")]
    credit = 10000 - COST * len(gw_paid)
    assert peer_credit(env) == credit
    assert wait_until(lambda: env.status("client")["credit_msat"] == credit, 5)
    # the client's history says where the money went: one payment, the rest still credit
    last = env.tg(lab.client, "history", "-c", str(env.client_conf)).stdout.strip().splitlines()[-1]
    assert last.endswith(f"sent 10 sat from the wallet, {format_msat(credit)} of it prepaid credit "
                         f"at the gateway, not used yet"), last
    # a gateway restart keeps the credit
    env.tg(lab.gw, "down", "-c", str(env.gw_conf))
    env.serve(timeout=60)
    assert peer_credit(env) == credit


# --- bitcoind -----------------------------------------------------------------------------

def test_bitcoind_each_contract_paid_to_its_own_address(lab, make_env, node):
    lab.start_upstream({})
    env = bitcoind_env(make_env, node, min_conf=0)
    env.serve(timeout=60)
    env.up(timeout=60)
    for dst in (UPSTREAM, GW_UP):
        assert ping(lab, lab.client, dst=dst, count=2).returncode == 0, env.logs()
    assert wait_until(lambda: len(paid(env, "gw")) == 2, 10), contracts(env, "gw")
    cids = [c["contract_id"] for c in paid(env, "gw")]
    rows = journal(env, "SELECT contract_id, detail FROM payments WHERE status='confirmed'")
    addr = {cid: json.loads(d)["address"] for cid, d in rows}
    assert sorted(addr) == sorted(cids) and len(set(addr.values())) == 2
    for cid in cids:     # the address proposed for that contract is the one paid
        assert journal(env, "SELECT account FROM accounts WHERE contract_id=?", cid) == [(addr[cid],)]
    assert env.status("client")["wallet"]["balance_msat"] > 0


def test_bitcoind_unconfirmed_payment_revoked_after_grace_then_a_block_confirms(lab, make_env, node):
    lab.start_upstream({})
    env = bitcoind_env(make_env, node, min_conf=1)
    env.serve(timeout=60)
    env.up(timeout=60)
    ping(lab, lab.client, count=2)
    assert wait_until(lambda: journal(env, "SELECT status FROM payments") == [("pending",)], 10)
    assert wait_until(lambda: any(c["state"] == "REVOKED" for c in contracts(env, "gw", UPSTREAM)), 10)
    [c1] = contracts(env, "gw", UPSTREAM)[:1]
    assert "grace" in c1["reason"] and not c1["paid"]
    # the next contract (no grace now) waits for its payment; one block confirms both payments
    ping(lab, lab.client, dst=GW_UP, count=1, wait=2)
    assert wait_until(lambda: len(journal(env, "SELECT 1 FROM payments WHERE status='pending'")) == 2, 10)
    node["mine"](1)
    assert wait_until(lambda: paid(env, "gw", GW_UP), 10), contracts(env, "gw")
    assert ping(lab, lab.client, dst=GW_UP, count=2).returncode == 0
    # the revoked contract's payment came too late for it: the peer keeps it as credit
    [(first_amount,)] = journal(env, "SELECT amount_msat FROM payments WHERE contract_id=?", c1["contract_id"])
    assert wait_until(lambda: peer_credit(env) == first_amount, 5)


def test_bitcoind_reused_transaction_refused(lab, make_env, node):
    lab.start_upstream({})
    env = bitcoind_env(make_env, node, min_conf=0)
    env.serve(timeout=60)
    env.up(timeout=60)
    assert ping(lab, lab.client, count=2).returncode == 0
    assert wait_until(lambda: paid(env, "gw", UPSTREAM), 10)
    [(cid1, tx_hex, _)] = client_payments(env)
    fake = FakeClient(lab, env.gw_public)
    try:
        p = fake.quote(f"{UPSTREAM}/32")
        fake.send(m.Accept(p.contract_id))
        fake.send(m.Pay(p.contract_id, cost_msat(p.price, p.limit_kb), "bitcoind", tx_hex))
        assert fake.run(lambda: fake.first(m.PaymentFailed, contract_id=p.contract_id), 10), fake.got
        assert cid1 in fake.first(m.PaymentFailed, contract_id=p.contract_id).reason
        assert fake.run(lambda: fake.first(m.Revoke, contract_id=p.contract_id), 10), fake.got
        assert not fake.first(m.Paid)
    finally:
        fake.close()
