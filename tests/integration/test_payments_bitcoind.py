"""The bitcoind backend against a real Bitcoin Knots regtest node (127.0.0.1),
fetched and started once for this module by scripts/regtest. No root needed.
Skips only when the node cannot be downloaded (scripts/regtest fetch exit 3)."""
import asyncio
import importlib
import os
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from tunnelgate.payments import PaymentError, Terms, load_backend

REPO = Path(__file__).resolve().parents[2]
REGTEST = str(REPO / "scripts/regtest")


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    try:
        importlib.import_module("bitcoinrpc.authproxy")
    except ImportError:
        r = subprocess.run([str(REPO / "scripts/install-payments")], capture_output=True, text=True,
                           timeout=600, env={**os.environ, "TUNNELGATE_SKIP_KNOTS": "1"})
        assert r.returncode == 0, f"scripts/install-payments failed:\n{r.stdout}\n{r.stderr}"
        importlib.invalidate_caches()
    r = subprocess.run([REGTEST, "fetch"], capture_output=True, text=True, timeout=300)
    if r.returncode == 3:
        pytest.skip(f"Bitcoin Knots could not be downloaded from Debian (registry refused?):\n{r.stderr[-2000:]}")
    assert r.returncode == 0, f"scripts/regtest fetch failed:\n{r.stdout}\n{r.stderr}"
    d = tmp_path_factory.mktemp("regtest")
    r = subprocess.run([REGTEST, "start", str(d)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"scripts/regtest start failed:\n{r.stdout}\n{r.stderr}"
    urls = dict(line.split(None, 1) for line in r.stdout.splitlines()[1:])
    try:
        yield {"dir": d, "client": urls["client"].strip(), "gateway": urls["gateway"].strip()}
    finally:
        subprocess.run([REGTEST, "stop", str(d)], timeout=60)


def payer(n, **kw):
    return load_backend("bitcoind", {"rpc_url": n["client"], **kw})


def payee(n, tmp_path, min_conf=1):
    return load_backend("bitcoind", {"rpc_url": n["gateway"], "min_confirmations": min_conf},
                        role="payee", journal=tmp_path / "journal.sqlite")


def rpc(n, wallet="client"):
    from tunnelgate.payments.bitcoind import RPC
    return RPC(n[wallet])


async def mine(n, blocks=1):
    r = rpc(n)
    await r.call("generatetoaddress", blocks, await r.call("getnewaddress"))


async def conflicting_tx(n, tx_hex, fee_sat, replaceable=False):
    """A transaction spending the same inputs as tx_hex back to the client."""
    r = rpc(n)
    tx = await r.call("decoderawtransaction", tx_hex)
    ins = [{"txid": i["txid"], "vout": i["vout"]} for i in tx["vin"]]
    total = Decimal(0)
    for i in ins:
        prev = await r.call("gettransaction", i["txid"])
        dec = await r.call("decoderawtransaction", prev["hex"])
        total += dec["vout"][i["vout"]]["value"]
    out = (total - Decimal(fee_sat) / Decimal(10**8)).quantize(Decimal("0.00000001"))
    raw = await r.call("createrawtransaction", ins, [{await r.call("getnewaddress"): out}], 0, replaceable)
    signed = await r.call("signrawtransactionwithwallet", raw)
    assert signed["complete"]
    return signed["hex"]


def test_pay_verify_pending_then_confirmed(node, tmp_path):
    async def go():
        c, g = payer(node), payee(node, tmp_path)
        acct = await g.account_for("btc-1")
        assert acct == await g.account_for("btc-1")  # one address per contract
        assert acct != await g.account_for("btc-2")
        t = Terms("btc-1", 150_000_500, peer="PEER", account=acct)  # rounds up to 150001 sat
        before = await c.balance_msat()
        proof = await c.pay(t)
        v = await g.verify(proof, t)
        assert v.status == "pending" and v.amount_msat == 150_001_000, v
        assert (await g.verify(proof, t)).status == "pending"  # idempotent
        await mine(node)
        v = await g.poll("btc-1")
        assert v.status == "confirmed", v
        assert (await g.verify(proof, t)).status == "confirmed"
        assert g.journal.credit("PEER") == 150_001_000
        assert len(g.journal.records()) == 1
        assert await c.balance_msat() < before - 150_001_000 + 50 * 10**11  # paid (block reward aside)
        assert c.fee_msat(1500) > 0
    run(go())


def test_zero_conf_setting(node, tmp_path):
    async def go():
        c, g = payer(node), payee(node, tmp_path, min_conf=0)
        t = Terms("btc-0", 20_000_000, account=await g.account_for("btc-0"))
        assert (await g.verify(await c.pay(t), t)).status == "confirmed"
    run(go())


def test_reused_tx_invalid(node, tmp_path):
    async def go():
        c, g = payer(node), payee(node, tmp_path)
        t = Terms("reuse-1", 10_000_000, peer="P", account=await g.account_for("reuse-1"))
        proof = await c.pay(t)
        assert (await g.verify(proof, t)).status == "pending"
        t2 = Terms("reuse-2", 10_000_000, peer="P", account=await g.account_for("reuse-2"))
        v = await g.verify(proof, t2)
        assert v.status == "invalid" and "reuse-1" in v.reason, v
        await mine(node)
        assert (await g.poll("reuse-1")).status == "confirmed"
    run(go())


def test_underpaying_tx_invalid(node, tmp_path):
    async def go():
        c, g = payer(node), payee(node, tmp_path)
        acct = await g.account_for("under-1")
        proof = await c.pay(Terms("under-1", 5_000_000, account=acct))
        v = await g.verify(proof, Terms("under-1", 10_000_000, peer="P", account=acct))
        assert v.status == "invalid" and "underpaid" in v.reason, v
        assert g.journal.records() == []
        # a transaction to another contract's address pays nothing to this one
        other = await c.pay(Terms("under-x", 10_000_000, account=await g.account_for("under-x")))
        v = await g.verify(other, Terms("under-1", 10_000_000, peer="P", account=acct))
        assert v.status == "invalid" and "pays nothing" in v.reason, v
    run(go())


def test_double_spent_before_verify_invalid(node, tmp_path):
    async def go():
        c, g = payer(node), payee(node, tmp_path)
        t = Terms("ds-1", 10_000_000, peer="P", account=await g.account_for("ds-1"))
        proof = await c.pay(t)
        cheat = await conflicting_tx(node, proof, fee_sat=20_000)
        await rpc(node).call("sendrawtransaction", cheat)
        v = await g.verify(proof, t)
        assert v.status == "invalid" and "refuses" in v.reason, v
        await mine(node)
    run(go())


def test_replaced_after_verify_invalid(node, tmp_path):
    async def go():
        c, g = payer(node, replaceable=True), payee(node, tmp_path)
        t = Terms("rbf-1", 10_000_000, peer="P", account=await g.account_for("rbf-1"))
        proof = await c.pay(t)
        assert (await g.verify(proof, t)).status == "pending"
        cheat = await conflicting_tx(node, proof, fee_sat=50_000, replaceable=True)
        await rpc(node).call("sendrawtransaction", cheat)  # RBF: replaces the payment
        v = await g.poll("rbf-1")
        assert v.status == "invalid" and "replaced" in v.reason, v
        await mine(node)
        v = await g.poll("rbf-1")
        assert v.status == "invalid"
        assert g.journal.credit("P") == 0
    run(go())


def test_restart_keeps_payment(node, tmp_path):
    async def go():
        c, g = payer(node), payee(node, tmp_path)
        t = Terms("rs-1", 1_000_000, peer="PR", account=await g.account_for("rs-1"))
        proof = await c.pay(t)
        assert (await g.verify(proof, t)).status == "pending"
        g.journal.close()
        await mine(node)
        g2 = payee(node, tmp_path)
        assert (await g2.verify(proof, t)).status == "confirmed"
        assert g2.journal.credit("PR") == 1_000_000 and len(g2.journal.records()) == 1
    run(go())


def test_insufficient_funds_says_so(node):
    async def go():
        c = payer(node)
        with pytest.raises(PaymentError, match="insufficient funds"):
            await c.pay(Terms("big", 10**6 * 10**8 * 1000,  # 1M BTC
                              account=await rpc(node, "gateway").call("getnewaddress")))
    run(go())


def test_garbage_proof_invalid(node, tmp_path):
    async def go():
        g = payee(node, tmp_path)
        await g.account_for("g-1")
        assert (await g.verify("zz", Terms("g-1", 1000))).status == "invalid"
        assert (await g.verify("00", Terms("g-1", 1000))).status == "invalid"
    run(go())
