import asyncio

import pytest

from tunnelgate.payments import PaymentError, Terms, load_backend
from tunnelgate.payments.dummy import make_proof


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def pair(tmp_path):
    payer = load_backend("dummy", {"balance_msat": 10_000})
    payee = load_backend("dummy", {}, role="payee", journal=tmp_path / "j.sqlite")
    yield payer, payee
    payee.journal.close()


def test_says_no_real_money(pair):
    payer, payee = pair
    assert payer.real_money is False and payee.real_money is False
    assert "no real payment" in payer.notice


def test_pay_verify_confirmed_and_idempotent(pair):
    payer, payee = pair
    t = Terms("c1", 3000, peer="PEER", account=run(payee.account_for("c1")))
    proof = run(payer.pay(t))
    assert proof.startswith("dummy:c1:3000:")
    v = run(payee.verify(proof, t))
    assert v.status == "confirmed" and v.amount_msat == 3000
    assert run(payee.verify(proof, t)) == v  # same proof again: one payment
    assert run(payer.balance_msat()) == 7000
    assert run(payer.pay(t)) == proof  # paying the same contract again: same proof, no charge
    assert run(payer.balance_msat()) == 7000
    assert payee.journal.credit("PEER") == 3000
    assert len(payee.journal.records()) == 1


def test_bound_to_one_contract(pair):
    payer, payee = pair
    t1 = Terms("c1", 1000, peer="P")
    proof = run(payer.pay(t1))
    assert run(payee.verify(proof, t1)).status == "confirmed"
    v = run(payee.verify(proof, Terms("c2", 1000, peer="P")))
    assert v.status == "invalid" and "c1" in v.reason


def test_proof_for_other_contract_invalid(pair):
    payer, payee = pair
    proof = run(payer.pay(Terms("c9", 1000)))
    v = run(payee.verify(proof, Terms("c1", 1000)))
    assert v.status == "invalid" and "c9" in v.reason


def test_underpayment_invalid(pair):
    _, payee = pair
    v = run(payee.verify(make_proof("c1", 999), Terms("c1", 1000)))
    assert v.status == "invalid" and "underpaid" in v.reason


def test_tampered_invalid(pair):
    _, payee = pair
    p = make_proof("c1", 1000).replace(":1000:", ":5000:")
    assert run(payee.verify(p, Terms("c1", 1000))).status == "invalid"
    assert run(payee.verify("garbage", Terms("c1", 1000))).status == "invalid"


def test_second_proof_for_paid_contract_refused(pair):
    _, payee = pair
    t = Terms("c1", 1000)
    assert run(payee.verify(make_proof("c1", 1000), t)).status == "confirmed"
    v = run(payee.verify(make_proof("c1", 2000), t))
    assert v.status == "invalid" and "already paid" in v.reason


def test_insufficient_funds(pair):
    payer, _ = pair
    with pytest.raises(PaymentError, match="insufficient funds"):
        run(payer.pay(Terms("c1", 20_000)))


def test_pending_then_poll_confirms(tmp_path):
    payee = load_backend("dummy", {"pending": True, "state_dir": str(tmp_path)}, role="payee")
    t = Terms("c1", 1000, peer="P")
    v = run(payee.verify(make_proof("c1", 1000), t))
    assert v.status == "pending"
    assert payee.journal.credit("P") == 0
    assert run(payee.poll("c1")).status == "confirmed"
    assert payee.journal.credit("P") == 1000


def test_restart_keeps_payment(tmp_path):
    path = tmp_path / "j.sqlite"
    t = Terms("c1", 1000, peer="P")
    a = load_backend("dummy", {}, role="payee", journal=path)
    assert run(a.verify(make_proof("c1", 1000), t)).status == "confirmed"
    a.journal.close()
    b = load_backend("dummy", {}, role="payee", journal=path)
    assert b.journal.credit("P") == 1000
    v = run(b.verify(make_proof("c1", 1000), t))
    assert v.status == "confirmed" and len(b.journal.records()) == 1
    assert b.journal.take_credit("P") == (1000, ["c1"])
    assert b.journal.credit("P") == 0


def test_unknown_backend():
    with pytest.raises(PaymentError, match="unknown payment backend"):
        load_backend("paypal", {})
