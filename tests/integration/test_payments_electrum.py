"""The electrum backend against a real regtest world on 127.0.0.1, started once for this module
(tglab.electrum_world): Bitcoin Knots, ElectrumX, two Electrum 4.3.4 daemons with a
Lightning channel client -> gateway. First the backend alone (payer and payee objects talking to
the real daemons), then end to end through a real tunnel in namespaces.

Nothing here skips silently: if a piece is not installed the module fails saying which and how
to install it (scripts/install-electrum, run by scripts/setup through scripts/install-payments).
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tglab.electrum_world import ElectrumWorld
from tunnelgate.payments import PaymentError, Terms, load_backend

REPO = Path(__file__).resolve().parents[2]


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    why = ElectrumWorld.check_installed()
    if why:
        r = subprocess.run([str(REPO / "scripts/install-electrum")], capture_output=True, text=True, timeout=600)
        why = ElectrumWorld.check_installed()
        assert why is None, f"{why}\nscripts/install-electrum said:\n{r.stdout}\n{r.stderr}"
    w = ElectrumWorld(tmp_path_factory.mktemp("electrum"))
    try:
        w.up()
        print(f"electrum world ready in {w.ready_s:.1f} s", file=sys.stderr)
        yield w
    finally:
        w.down()


def payer(world, **kw):
    return load_backend("electrum", {"rpc_url": world.wallets["client"].url, **kw})


def payee(world, tmp_path, name="journal.sqlite", **kw):
    return load_backend("electrum", {"rpc_url": world.wallets["gateway"].url, **kw}, role="payee",
                        journal=tmp_path / name)


def gw_channel_msat(world) -> int:
    [c] = [c for c in world.wallets["gateway"].rpc("list_channels") if c["type"] == "CHANNEL"]
    return c["local_balance"] * 1000


# --- Lightning --------------------------------------------------------------------------------

def test_lightning_invoice_paid_confirmed_surplus_is_the_invoice_amount(world, tmp_path):
    gw, cl = payee(world, tmp_path, invoice_msat=5_000_000), payer(world, max_invoice_msat=5_000_000)
    before = gw_channel_msat(world)

    async def go():
        account = await gw.account_for("c1")
        assert account.startswith("lightning:lnbcrt")
        assert await gw.account_for("c1") == account          # one invoice per contract
        proof = await cl.pay(Terms("c1", 2000, account=account))
        assert await cl.pay(Terms("c1", 2000, account=account)) == proof   # paying again: same proof
        v = await gw.verify(proof, Terms("c1", 2000, peer="peerA", account=account))
        return account, proof, v
    account, proof, v = run(go())
    assert proof.startswith("ln:") and len(proof) == 3 + 64
    assert (v.status, v.amount_msat) == ("confirmed", 5_000_000)
    # the money really moved through the channel
    assert gw_channel_msat(world) == before + 5_000_000
    # Electrum itself says the request is paid
    rhash = __import__("hashlib").sha256(bytes.fromhex(proof[3:])).hexdigest()
    assert world.wallets["gateway"].rpc("get_request", request_id=rhash)["status"] == 3


def test_lightning_preimage_reused_and_invoice_paid_twice_never_buy_twice(world, tmp_path):
    gw, cl = payee(world, tmp_path), payer(world)

    async def go():
        a1, a2 = await gw.account_for("r1"), await gw.account_for("r2")
        proof = await cl.pay(Terms("r1", 2000, account=a1))
        first = await gw.verify(proof, Terms("r1", 2000, peer="p", account=a1))
        again = await gw.verify(proof, Terms("r1", 2000, peer="p", account=a1))
        other = await gw.verify(proof, Terms("r2", 2000, peer="p", account=a2))
        # a fresh payer (no memory of r1) asked to pay the same invoice again: Electrum refuses
        # to pay it twice and hands back the preimage of the first payment
        proof2 = await payer(world).pay(Terms("r1b", 2000, account=a1))
        third = await gw.verify(proof2, Terms("r2", 2000, peer="p", account=a2))
        return first, again, other, proof2 == proof, third
    first, again, other, same, third = run(go())
    assert first.status == again.status == "confirmed"
    assert other.status == "invalid" and "already paid for contract r1" in other.reason
    assert same
    assert third.status == "invalid"
    assert len(gw.journal.records("confirmed")) == 1


def test_lightning_forged_or_foreign_preimage_refused(world, tmp_path):
    gw = payee(world, tmp_path)
    other_gw = payee(world, tmp_path, name="other.sqlite")

    async def go():
        a = await gw.account_for("f1")
        forged = await gw.verify("ln:" + "11" * 32, Terms("f1", 2000, account=a))
        # an invoice issued by the same daemon but through another journal (another contract)
        b = await other_gw.account_for("f2")
        proof = await payer(world).pay(Terms("f2", 2000, account=b))
        foreign = await gw.verify(proof, Terms("f1", 2000, account=a))
        junk = await gw.verify("ln:xyz", Terms("f1", 2000, account=a))
        return forged, foreign, junk
    forged, foreign, junk = run(go())
    assert forged.status == "invalid" and "no invoice this gateway issued" in forged.reason
    assert foreign.status == "invalid"
    assert junk.status == "invalid" and "32-byte preimage" in junk.reason


def test_lightning_invoice_above_the_clients_limit_not_paid(world, tmp_path):
    gw = payee(world, tmp_path, invoice_msat=3_000_000)
    cl = payer(world, max_invoice_msat=1_000_000)

    async def go():
        a = await gw.account_for("big")
        with pytest.raises(PaymentError, match="max_invoice_msat"):
            await cl.pay(Terms("big", 2000, account=a))
    run(go())


def test_gateway_daemon_killed_mid_payment_then_restarted(world, tmp_path):
    """The gateway's Electrum dies while the client pays: the client keeps its money (the payment
    fails, said so); after the restart the same contract is paid once; a proof verified while the
    daemon is down is still checked (from the journal) and counted once."""
    gw_w = world.wallets["gateway"]
    gw, cl = payee(world, tmp_path), payer(world)
    account = run(gw.account_for("k1"))
    before = cl_bal = run(cl.balance_msat())
    world.kill_daemon(gw_w)
    try:
        with pytest.raises(PaymentError) as e:
            run(payer(world).pay(Terms("k1", 2000, account=account)))
        # a new invoice cannot be made either: one line saying the daemon is down
        with pytest.raises(PaymentError, match="not running or not reachable"):
            run(gw.account_for("k2"))
    finally:
        world.start_daemon(gw_w)
    assert "electrum" in str(e.value)
    assert run(cl.balance_msat()) == cl_bal          # nothing left the client's wallet
    # channel re-established after the restart: the payment goes through, once
    deadline = time.monotonic() + 60
    while True:
        try:
            proof = run(cl.pay(Terms("k1", 2000, account=account)))
            break
        except PaymentError:
            if time.monotonic() > deadline:
                raise
            cl = payer(world)
            time.sleep(1)
    world.kill_daemon(gw_w)                # verify while the daemon is down: the journal decides
    try:
        v = run(gw.verify(proof, Terms("k1", 2000, peer="p", account=account)))
        assert v.status == "confirmed"
    finally:
        world.start_daemon(gw_w)
    assert run(gw.verify(proof, Terms("k1", 2000, peer="p", account=account))).status == "confirmed"
    assert len(gw.journal.records("confirmed")) == 1
    assert run(cl.balance_msat()) < before


# --- on-chain ---------------------------------------------------------------------------------

def test_onchain_below_the_economic_minimum_refused_topup_accepted_at_one_conf(world, tmp_path):
    gw = payee(world, tmp_path, method="onchain", min_confirmations=1, onchain_min_msat=20_000_000)
    cl = payer(world)

    async def go():
        a = await gw.account_for("o1")
        assert a.startswith("bitcoin:bcrt1") and a.endswith("?amount=0.00020000")
        # a client that ignores the minimum: refused, saying why
        from tunnelgate.payments.electrum import parse_account
        _, addr, _ = parse_account(a)
        small = await cl.rpc.call("payto", wallet=True, destination=addr, amount="0.00002", feerate=2.0)
        refused = await gw.verify("tx:" + small, Terms("o1", 2_000_000, account=a))
        proof = await cl.pay(Terms("o1", 2_000_000, account=a))       # pays the minimum (a top-up)
        v = await gw.verify(proof, Terms("o1", 2_000_000, peer="p", account=a))
        return a, refused, proof, v
    a, refused, proof, v = run(go())
    assert refused.status == "invalid" and "on-chain minimum" in refused.reason
    assert v.status == "pending" and v.amount_msat == 20_000_000
    world.mine(1)
    deadline = time.monotonic() + 30
    while run(gw.poll("o1")).status == "pending" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert run(gw.poll("o1")).status == "confirmed"
    # the same transaction for another contract buys nothing
    a2 = run(gw.account_for("o2"))
    assert run(gw.verify(proof, Terms("o2", 2_000_000, account=a2))).status == "invalid"


def test_onchain_zero_conf_only_up_to_the_limit(world, tmp_path):
    gw = payee(world, tmp_path, method="onchain", min_confirmations=0, onchain_min_msat=10_000_000,
               zeroconf_max_msat=15_000_000)
    cl = payer(world)

    async def go():
        a1, a2 = await gw.account_for("z1"), await gw.account_for("z2")
        small = await cl.pay(Terms("z1", 10_000_000, account=a1))
        big = await cl.pay(Terms("z2", 30_000_000, account=a2))
        v1 = await gw.verify(small, Terms("z1", 10_000_000, peer="p", account=a1))
        v2 = await gw.verify(big, Terms("z2", 30_000_000, peer="p", account=a2))
        for _ in range(100):
            v1 = await gw.poll("z1")
            if v1.status != "pending":
                break
            await asyncio.sleep(0.2)
        return v1, v2, await gw.poll("z2")
    v1, v2, v2b = run(go())
    assert v1.status == "confirmed" and "0-conf" in v1.reason
    assert v2.status == v2b.status == "pending" and "0-conf limit" in v2b.reason
    world.mine(1)
    deadline = time.monotonic() + 30
    while run(gw.poll("z2")).status == "pending" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert run(gw.poll("z2")).status == "confirmed"


def test_rpc_config_read_from_the_electrum_data_dir_and_errors_name_no_password(world, tmp_path):
    w = world.wallets["gateway"]
    gw = load_backend("electrum", {"electrum_dir": str(w.datadir)}, role="payee", journal=tmp_path / "j")
    assert run(gw.account_for("d1")).startswith("lightning:")
    bad = load_backend("electrum", {"rpc_url": f"http://tg-gateway:wrong-pw@127.0.0.1:{w.port}"})
    with pytest.raises(PaymentError) as e:
        run(bad.balance_msat())
    assert "refused the RPC user/password" in str(e.value) and "wrong-pw" not in str(e.value)
    assert w.password not in json.dumps(gw.journal.records()) + repr(gw.journal.account("d1", "electrum"))


# --- end to end: a real tunnel in namespaces, the world's daemons reached through forwarders ---

from tgenv import ping, wait_until                                    # noqa: E402
from tglab.lab import GW_UP, UPSTREAM                            # noqa: E402
from tunnelgate.money import cost_msat                                # noqa: E402
from tunnelgate.protocol import messages as m                         # noqa: E402
from payments_helpers import (COST, POLICY, PRICING, FakeClient, client_payments,  # noqa: E402,F401
                              contracts, events, journal, make_env, paid, peer_credit)


def electrum_env(make_env, world, gateway_payment: str = "", client_payment: str = "",
                 pricing: str = PRICING, policy: str = POLICY):
    gw_w, cl_w = world.wallets["gateway"], world.wallets["client"]
    env = make_env(ports=(gw_w.port, cl_w.port))
    env.gw_conf.write_text(env.gw_conf.read_text() + pricing + f"""
[payment]
backend = "electrum"
rpc_url = "{gw_w.url}"
{gateway_payment}
""")
    env.client_conf.write_text(env.client_conf.read_text() + policy + f"""
[payment]
backend = "electrum"
electrum_dir = "{cl_w.datadir}"
{client_payment}
""")
    return env


def ln_rows(env):
    return journal(env, "SELECT contract_id, amount_msat, status, applied, detail FROM payments")


@pytest.mark.root
def test_e2e_each_contract_paid_by_its_own_lightning_invoice_with_renewals(lab, make_env, world):
    lab.start_upstream({})
    # 20 KB contracts at 100 msat/KB = 2000 msat, one invoice of exactly that per contract
    pricing = PRICING.replace("contract_kb = 2000", "contract_kb = 20").replace('"1"', '"100"')
    env = electrum_env(make_env, world, gateway_payment="invoice_msat = 2000", pricing=pricing,
                       policy=POLICY.replace('"2"', '"200"'))
    before = gw_channel_msat(world)
    env.serve(timeout=60)
    env.up(timeout=60)
    r = ping(lab, lab.client, count=25, interval=0.1, wait=1, extra=("-s", "1200"))
    assert "bytes from" in r.stdout, env.logs()
    assert wait_until(lambda: len(paid(env, "gw", UPSTREAM)) >= 3, 20), contracts(env, "gw")
    rows = [r for r in ln_rows(env) if r[2] == "confirmed"]
    n = len(rows)
    assert n >= 3 and all(r[1] == 2000 and r[3] == 1 for r in rows), rows
    assert len({json.loads(r[4])["rhash"] for r in rows}) == n            # one invoice each
    assert wait_until(lambda: gw_channel_msat(world) >= before + n * 2000, 10)
    assert not events(env, "client", "payment_failed")


@pytest.mark.root
def test_e2e_one_lightning_topup_pays_several_contracts_and_quote_shows_each_method(lab, make_env, world):
    lab.start_upstream({})
    pricing = PRICING.replace("contract_kb = 2000", "contract_kb = 20").replace('"1"', '"100"')
    env = electrum_env(make_env, world, gateway_payment="invoice_msat = 10000", pricing=pricing,
                       policy=POLICY.replace('"2"', '"200"'))
    env.serve(timeout=60)
    env.up(timeout=60)
    q = json.loads(env.tg(lab.client, "quote", "-c", str(env.client_conf), "--json", UPSTREAM).stdout)
    by = {p["method"]: p for p in q["payment"]}
    assert by["lightning"]["amount_msat"] == 2000 and by["lightning"]["fee_msat"] == 0
    assert by["onchain"]["amount_msat"] > by["onchain"]["fee_msat"] * 5 and "minimum" in by["onchain"]["note"]
    ping(lab, lab.client, count=25, interval=0.1, wait=1, extra=("-s", "1200"))
    assert wait_until(lambda: len(paid(env, "gw", UPSTREAM)) >= 3, 20), contracts(env, "gw")
    assert [r[1:4] for r in ln_rows(env)] == [(10000, "confirmed", 1)]
    gw_paid = paid(env, "gw", UPSTREAM)
    assert sum(c["credit"] for c in gw_paid) >= 2, gw_paid
    assert peer_credit(env) == 10000 - 2000 * len(gw_paid)


@pytest.mark.root
def test_e2e_reused_lightning_preimage_refused(lab, make_env, world):
    lab.start_upstream({})
    env = electrum_env(make_env, world, gateway_payment="invoice_msat = 2000")
    env.serve(timeout=60)
    env.up(timeout=60)
    assert ping(lab, lab.client, count=2).returncode == 0, env.logs()
    assert wait_until(lambda: paid(env, "gw", UPSTREAM), 15)
    [(cid1, proof, _)] = client_payments(env)
    fake = FakeClient(lab, env.gw_public)
    try:
        p = fake.quote(f"{GW_UP}/32")
        assert p.account.startswith("lightning:")
        fake.send(m.Accept(p.contract_id))
        fake.send(m.Pay(p.contract_id, cost_msat(p.price, p.limit_kb), "electrum", proof))
        assert fake.run(lambda: fake.first(m.PaymentFailed, contract_id=p.contract_id), 10), fake.got
        assert cid1 in fake.first(m.PaymentFailed, contract_id=p.contract_id).reason
        assert fake.run(lambda: fake.first(m.Revoke, contract_id=p.contract_id), 10), fake.got
        assert not fake.first(m.Paid)
    finally:
        fake.close()
    assert journal(env, "SELECT COUNT(*) FROM payments WHERE status='confirmed'") == [(1,)]


@pytest.mark.root
def test_e2e_gateway_electrum_killed_client_keeps_money_then_pays_after_restart(lab, make_env, world):
    lab.start_upstream({})
    env = electrum_env(make_env, world, gateway_payment="invoice_msat = 2000")
    env.serve(timeout=60)
    env.up(timeout=60)
    gw_w = world.wallets["gateway"]
    world.kill_daemon(gw_w)
    try:
        cl_before = run(payer(world).balance_msat())
        ping(lab, lab.client, count=3, wait=1)
        # the client's payment fails, one line saying why, and nothing left its wallet
        assert wait_until(lambda: events(env, "client", "payment_failed"), 30), events(env, "client")
        reason = events(env, "client", "payment_failed")[0]["reason"]
        assert reason.startswith("electrum: the gateway's Lightning node is not connected"), reason
        assert "\n" not in reason
        assert run(payer(world).balance_msat()) == cl_before
        assert not paid(env, "gw")
    finally:
        world.start_daemon(gw_w)
    # the daemon is back and the channel reconnects: a new contract is paid, once
    cl_w = world.wallets["client"]
    assert wait_until(lambda: any(c["peer_state"] == "GOOD" for c in cl_w.rpc("list_channels")), 60)
    assert wait_until(lambda: ping(lab, lab.client, dst=GW_UP, count=1, wait=1).returncode == 0, 60), env.logs()
    assert wait_until(lambda: paid(env, "gw", GW_UP), 30), (
        [(e["kind"], e.get("reason")) for e in events(env, "client")],
        [(c["state"], c["reason"], c["paid"]) for c in contracts(env, "gw")])
    confirmed = journal(env, "SELECT contract_id FROM payments WHERE status='confirmed'")
    assert len(confirmed) == len({c for (c,) in confirmed})


@pytest.mark.root
def test_e2e_tunnelgate_client_killed_after_paying_never_pays_twice(lab, make_env, world):
    """The client is killed right after Electrum paid (the proof is in its database): after the
    restart it sends the same proof, not a second payment; the gateway counts it once."""
    lab.start_upstream({})
    env = electrum_env(make_env, world, gateway_payment="invoice_msat = 2000")
    env.serve(timeout=60)
    env.up(timeout=60)
    before = gw_channel_msat(world)
    pinger = lab.popen(lab.client, "ping", "-n", "-c", "1", "-W", "2", UPSTREAM,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: client_payments(env), 20, step=0.02), env.logs()
        env.kill9("cl")
    finally:
        pinger.wait(timeout=10)
    [(cid, proof, _)] = client_payments(env)
    env.up(timeout=60)
    assert wait_until(lambda: ping(lab, lab.client, count=1, wait=1).returncode == 0, 30), env.logs()
    assert wait_until(lambda: journal(env, "SELECT status FROM payments WHERE contract_id=?", cid)
                      == [("confirmed",)], 15)
    assert [p for p in client_payments(env) if p[0] == cid] == [(cid, proof, 2000)]
    rows = journal(env, "SELECT COUNT(*) FROM payments WHERE status='confirmed'")[0][0]
    # every confirmed payment moved 2000 msat through the channel, the first one once
    assert wait_until(lambda: gw_channel_msat(world) == before + rows * 2000, 10), (rows, gw_channel_msat(world))


@pytest.mark.root
def test_e2e_tunnelgate_gateway_killed_after_payment_keeps_it_once(lab, make_env, world):
    lab.start_upstream({})
    env = electrum_env(make_env, world, gateway_payment="invoice_msat = 2000")
    env.serve(timeout=60)
    env.up(timeout=60)
    pinger = lab.popen(lab.client, "ping", "-n", "-c", "1", "-W", "2", UPSTREAM,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: events(env, "gw", "payment_received"), 20, step=0.02), env.logs()
        env.kill9("gw")
    finally:
        pinger.wait(timeout=10)
    [(cid, _, amount)] = client_payments(env)
    env.serve(timeout=60)

    def settled():
        rows = journal(env, "SELECT status, applied FROM payments WHERE contract_id=?", cid)
        return rows == [("confirmed", 1)] and (
            any(c["contract_id"] == cid and c["paid"] for c in contracts(env, "gw")) or peer_credit(env) == amount)
    if not wait_until(settled, 20):
        pytest.fail(f"{journal(env, 'SELECT status, applied, contract_id FROM payments')}\n"
                    f"{[(c['contract_id'], c['state'], c['paid']) for c in contracts(env, 'gw')]}\n"
                    f"credit {peer_credit(env)}\n{env.logs()}", pytrace=False)
    assert len(client_payments(env)) == 1
    assert wait_until(lambda: ping(lab, lab.client, count=1, wait=1).returncode == 0, 15), env.logs()
    assert journal(env, "SELECT COUNT(*) FROM payments WHERE contract_id=?", cid) == [(1,)]


@pytest.mark.root
@pytest.mark.parametrize("conf", [0, 1])
def test_e2e_onchain_topup_at_zero_and_one_confirmation(lab, make_env, world, conf):
    lab.start_upstream({})
    gw = (f'method = "onchain"\nmin_confirmations = {conf}\nonchain_min_msat = 5000000\n'
          f'zeroconf_max_msat = 100000000')
    # the mempool reaches the gateway's wallet through ElectrumX in a few seconds: grace 10 s
    env = electrum_env(make_env, world, gateway_payment=gw, pricing=PRICING.replace(
        "grace_time_s = 3", "grace_time_s = 10"))
    env.serve(timeout=60)
    env.up(timeout=60)
    t0 = time.monotonic()
    ping(lab, lab.client, count=2, wait=1)
    assert wait_until(lambda: client_payments(env), 15), env.logs()
    [(cid, proof, amount)] = client_payments(env)[:1]
    assert amount == COST and proof.startswith("tx:")       # the contract's cost asked...
    if conf:
        # in the mempool, not confirmed: pending (traffic flows in grace) until a block comes
        assert wait_until(lambda: "0/1 confirmations" in (journal(
            env, "SELECT reason FROM payments WHERE contract_id=?", cid) or [("",)])[0][0], 8), \
            journal(env, "SELECT * FROM payments")
        assert not paid(env, "gw", UPSTREAM)
        world.mine(1)
    assert wait_until(lambda: journal(env, "SELECT status, amount_msat FROM payments WHERE contract_id=?", cid)
                      == [("confirmed", 5_000_000)], 30), journal(env, "SELECT * FROM payments")
    settle_s = time.monotonic() - t0
    # ...5000 sat paid (the on-chain minimum, a top-up): what the contract did not use is credit
    assert wait_until(lambda: peer_credit(env) > 0, 10)
    assert wait_until(lambda: ping(lab, lab.client, count=1, wait=1).returncode == 0, 20), env.logs()
    # paid within the grace, by that one payment
    assert len(client_payments(env)) == 1 and paid(env, "gw", UPSTREAM)
    assert settle_s < 10, settle_s


@pytest.mark.root
def test_e2e_gateway_status_says_its_electrum_daemon_is_not_running(lab, make_env, world):
    lab.start_upstream({})
    from tglab.electrum_world import free_port
    dead = free_port()                      # nothing listens there
    env = electrum_env(make_env, world)
    env.gw_conf.write_text(env.gw_conf.read_text().replace(
        world.wallets["gateway"].url, f"http://u:p@127.0.0.1:{dead}"))
    env.serve(timeout=60)
    pay = env.status("gw")["payment"]
    assert pay["accounts_ready"] == 0
    assert pay["account_error"].startswith(f"electrum: the daemon at 127.0.0.1:{dead} is not running"), pay
    assert "start it: electrum daemon -d" in pay["account_error"]
