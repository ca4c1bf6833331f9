"""The cashu backend against a real local mint (nutshell, FakeWallet, SQLite)
on 127.0.0.1, started once for this module by scripts/mint. No root needed."""
import asyncio
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from payments_helpers import ensure_cashu_installed
from tunnelgate.payments import PaymentError, Terms, load_backend

REPO = Path(__file__).resolve().parents[2]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def mint(tmp_path_factory):
    ensure_cashu_installed()
    d = tmp_path_factory.mktemp("cashu")
    port = _free_port()
    r = subprocess.run([str(REPO / "scripts/mint"), "start", str(d / "mint"), "--listen", f"127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, f"scripts/mint start failed:\n{r.stdout}\n{r.stderr}"
    url = r.stdout.strip().splitlines()[-1]
    assert url == f"http://127.0.0.1:{port}"
    # one funded client wallet for the module
    r = subprocess.run([str(REPO / "scripts/mint"), "fund", str(d / "client"), "500", "--mint", url],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"scripts/mint fund failed:\n{r.stdout}\n{r.stderr}"
    assert "500 sat" in r.stdout
    from tunnelgate.payments.cashu import keygen
    keygen(str(d / "gw.key"))
    keygen(str(d / "other.key"))
    try:
        yield {"url": url, "dir": d}
    finally:
        subprocess.run([str(REPO / "scripts/mint"), "stop", str(d / "mint")], timeout=30)


def payer(m):
    return load_backend("cashu", {"wallet_dir": str(m["dir"] / "client"), "mint_url": m["url"]})


def payee(m, journal="j.sqlite", mints=None, key="gw.key", wallet="gw"):
    return load_backend("cashu", {"mints": mints or [m["url"]], "wallet_dir": str(m["dir"] / wallet),
                                  "p2pk_key_file": str(m["dir"] / key)},
                        role="payee", journal=str(m["dir"] / journal))


def test_pay_verify_pending_then_confirmed(mint):
    async def go():
        c, g = payer(mint), payee(mint)
        t = Terms("ok-1", 10_500, peer="PEER1", account=await g.account_for("ok-1"))
        before = await c.balance_msat()
        token = await c.pay(t)
        assert token.startswith("cashuB")
        assert await c.balance_msat() == before - 11_000  # rounded up to whole sats
        v = await g.verify(token, t)
        assert v.status == "pending" and v.amount_msat == 11_000
        v = await g.poll("ok-1")
        assert v.status == "confirmed", v
        assert v.amount_msat == 11_000
        assert (await g.verify(token, t)).status == "confirmed"  # idempotent
        assert g.journal.credit("PEER1") == 11_000
        assert len(g.journal.records()) == 1
        await g.close()
    run(go())


def test_same_token_for_another_contract_invalid_and_already_spent(mint):
    async def go():
        c, g = payer(mint), payee(mint, journal="j2.sqlite")
        acct = await g.account_for("x")
        t = Terms("spent-1", 3000, peer="P", account=acct)
        token = await c.pay(t)
        assert (await g.verify(token, t)).status == "pending"
        assert (await g.poll("spent-1")).status == "confirmed"
        # the same token for another contract: bound to the first one
        v = await g.verify(token, Terms("spent-2", 3000, peer="P", account=acct))
        assert v.status == "invalid" and "spent-1" in v.reason
        await g.close()
        # a gateway that never saw it (fresh journal, same key): the mint refuses it
        g2 = payee(mint, journal="j2b.sqlite", wallet="gw2")
        v = await g2.verify(token, Terms("spent-3", 3000, peer="P", account=acct))
        assert v.status == "pending"  # offline checks pass
        v = await g2.poll("spent-3")
        assert v.status == "invalid" and "already spent" in v.reason, v
        await g2.close()
    run(go())


def test_underpayment_invalid(mint):
    async def go():
        c, g = payer(mint), payee(mint, journal="j3.sqlite")
        acct = await g.account_for("u")
        token = await c.pay(Terms("under-1", 5000, account=acct))
        v = await g.verify(token, Terms("under-1", 10_000, peer="P", account=acct))
        assert v.status == "invalid" and "underpaid" in v.reason, v
        assert g.journal.records() == []  # nothing taken
    run(go())


def test_foreign_mint_invalid(mint):
    async def go():
        c = payer(mint)
        g = payee(mint, journal="j4.sqlite", mints=["http://127.0.0.1:9"])
        ours = payee(mint, journal="j4b.sqlite")
        # the client pays into an account naming its own mint, the gateway only takes another one
        token = await c.pay(Terms("foreign-1", 1000, account=await ours.account_for("f")))
        v = await g.verify(token, Terms("foreign-1", 1000, peer="P", account=await g.account_for("f")))
        assert v.status == "invalid" and "do not accept" in v.reason, v
        # and a payer refuses an account whose mints exclude its own
        with pytest.raises(PaymentError, match="accepts ecash from"):
            await c.pay(Terms("foreign-2", 1000, account=await g.account_for("f")))
    run(go())


def test_token_locked_to_another_key_invalid(mint):
    async def go():
        c = payer(mint)
        other = payee(mint, journal="j5o.sqlite", key="other.key", wallet="gwo")
        g = payee(mint, journal="j5.sqlite")
        token = await c.pay(Terms("lock-1", 1000, account=await other.account_for("l")))
        v = await g.verify(token, Terms("lock-1", 1000, peer="P", account=await g.account_for("l")))
        assert v.status == "invalid" and "another key" in v.reason, v
    run(go())


def test_journal_survives_restart(mint):
    path = "j6.sqlite"

    async def first():
        c, g = payer(mint), payee(mint, journal=path)
        t = Terms("restart-1", 2000, peer="PEER6", account=await g.account_for("r"))
        token = await c.pay(t)
        assert (await g.verify(token, t)).status == "pending"
        assert (await g.poll("restart-1")).status == "confirmed"
        g.journal.close()
        return token, t

    token, t = run(first())

    async def second():
        g = payee(mint, journal=path)  # "restarted" gateway: new object, same journal
        assert g.journal.credit("PEER6") == 2000  # taken, not yet applied by the daemon
        v = await g.verify(token, t)
        assert v.status == "confirmed" and v.amount_msat == 2000
        assert len(g.journal.records()) == 1  # not a second payment
        v = await g.verify(token, Terms("restart-2", 2000, peer="PEER6", account=t.account))
        assert v.status == "invalid"
        g.journal.mark_applied("restart-1")
        assert g.journal.credit("PEER6") == 0
    run(second())


def test_crash_mid_swap_is_not_lost(mint):
    """The mint took the token but the gateway died before recording it: the
    next attempt finds it spent, and since it is locked to our key, it is ours."""
    path = "j7.sqlite"

    async def first():
        c, g = payer(mint), payee(mint, journal=path)
        t = Terms("crash-1", 1000, peer="PEER7", account=await g.account_for("c"))
        token = await c.pay(t)
        await g.verify(token, t)
        assert (await g.poll("crash-1")).status == "confirmed"
        key = g.journal.for_contract("crash-1").key
        g.journal.close()
        return key, token, t

    key, token, t = run(first())
    db = sqlite3.connect(mint["dir"] / path)  # rewind to "swap attempted, answer lost"
    db.execute("UPDATE payments SET status='pending' WHERE key=?", (key,))
    db.commit()
    db.close()

    async def second():
        g = payee(mint, journal=path)
        v = await g.poll("crash-1")
        assert v.status == "confirmed" and v.amount_msat == 1000, v
        assert (await g.verify(token, t)).status == "confirmed"
    run(second())


def test_empty_wallet_says_so(mint, tmp_path):
    async def go():
        g = payee(mint, journal="j8.sqlite")
        c = load_backend("cashu", {"wallet_dir": str(tmp_path / "empty"), "mint_url": mint["url"]})
        assert await c.balance_msat() == 0
        with pytest.raises(PaymentError) as e:
            await c.pay(Terms("empty-1", 1000, account=await g.account_for("e")))
        assert "empty" in str(e.value) and "scripts/mint fund" in str(e.value)
    run(go())


def test_insufficient_funds_says_so(mint):
    async def go():
        c, g = payer(mint), payee(mint, journal="j9.sqlite")
        with pytest.raises(PaymentError, match="insufficient funds"):
            await c.pay(Terms("big-1", 10_000_000, account=await g.account_for("b")))
    run(go())


def test_garbage_proof_invalid(mint):
    async def go():
        g = payee(mint, journal="j10.sqlite")
        v = await g.verify("cashuBnotatoken", Terms("g-1", 1000, peer="P"))
        assert v.status == "invalid"
    run(go())
