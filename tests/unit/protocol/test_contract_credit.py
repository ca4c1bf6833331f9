"""Payments in the engines (issue 4): a fresh account per contract, prepaid credit, and a
client that stops buying when its wallet cannot pay (and resumes when funded)."""
from tunnelgate.protocol import events as E
from tunnelgate.meter import FORWARD, HELD
from tunnelgate.protocol import buyer as ce
from tunnelgate.protocol import seller as ge
from tunnelgate.protocol.credit import MemoryCredit
from tunnelgate.protocol.seller import Seller
from tunnelgate.protocol.messages import encode

from engine_world import DST, PEER, World, policy, pricing

COST = 50       # 100 KB at 0.5 msat/KB


class CreditWorld(World):
    """The daemon's part: a payment worth more than the contract's cost credits the surplus."""

    def __init__(self, prepay=0, funds=None, confirm_after=0.0, **kw):
        super().__init__(loss=0, reorder=0, autopay=False, confirm=False, **kw)
        self.confirm_after = confirm_after  # the backend's verification time (cashu: a mint call)
        self.verifying = []                 # (when confirmed, event)
        self.gw = Seller(self.gw.pricing, credit=MemoryCredit())
        self.cl.prepay_msat = prepay
        self.cl.funds_msat = funds
        self.pays = []
        self.received = set()
        self.wallet_ok = True               # False: the daemon's wallet cannot pay

    def _pump(self):
        super()._pump()
        for e in [e for e in self.cev if e.kind == E.PaymentDue.kind and e.contract_id not in self.pays
                  and self.wallet_ok]:
            self.pays.append(e.contract_id)
            self.cl.paid(PEER, e.contract_id, "dummy", "proof-" + e.contract_id, e.pay_msat)
        for e in [e for e in self.gev if e.kind == E.PaymentReceived.kind and id(e) not in self.received]:
            self.received.add(id(e))
            self.verifying.append((self.now + self.confirm_after, e))
        for due, e in [x for x in self.verifying if x[0] <= self.now]:
            self.verifying.remove((due, e))
            left = self.gw.credit.add(PEER, e.amount_msat - e.cost_msat)
            self.gw.payment_confirmed(e.contract_id, self.now, credit_msat=left)
        for peer, msg in self.gw.take_outgoing():
            self.gch.send(encode(msg))
        for _, msg in self.cl.take_outgoing():
            self.cch.send(encode(msg))


def test_account_hook_gives_each_proposal_its_own_account():
    given = []

    def account_for(cid):
        if len(given) == 1:
            given.append(None)
            return None                    # none ready: no proposal now
        given.append(f"addr-{cid}")
        return given[-1]
    w = World(loss=0, reorder=0)
    w.gw = Seller(pricing(contract_kb=2), account_for=account_for)
    w.cl.policy = policy(data_renewal_kb=0)
    assert w.send() == HELD
    w.run(0.5)
    c1 = w.gw_contract()[0]
    for _ in range(4):
        w.send(size=1000)
    w.run(0.5)
    w.send()
    w.run(0.5)
    accounts = [e.account for e in w.gev if e.kind == E.PaymentReceived.kind]
    assert accounts[0] == f"addr-{c1['contract_id']}"
    assert None in given and len(set(a for a in accounts)) == len(accounts) >= 2
    assert w.gw.status(w.now)["peers"][PEER.hex()]["no_account"] == 1


def test_prepaid_credit_pays_later_contracts_without_a_payment():
    w = CreditWorld(prepay=4 * COST, pr=pricing(contract_kb=100))
    w.cl.policy = policy(data_renewal_kb=0)
    assert w.send() == HELD
    w.run(0.5)
    # one payment of 200 msat: 50 for the contract, 150 credit
    [pay] = [e for e in w.cev if e.kind == E.PaymentDue.kind]
    assert pay.pay_msat == 200
    assert w.gw.credit.balance(PEER) == 150 and w.cl.book(PEER).credit_msat == 150
    for n in range(3):                      # three more contracts, each used up, paid from credit
        for _ in range(100):
            if w.send() != FORWARD:
                break
        w.run(0.5)
    paid = [e for e in w.gev if e.kind == E.Paid.kind]
    assert len(paid) == 4 and [e.from_credit for e in paid] == [False, True, True, True]
    assert len([e for e in w.cev if e.kind == E.PaymentDue.kind]) == 1
    assert w.gw.credit.balance(PEER) == 0 and w.cl.book(PEER).credit_msat == 0
    assert w.gw.status(w.now)["peers"][PEER.hex()]["credit_contracts"] == 3
    # credit gone: the next contract is paid with a new prepayment
    for _ in range(100):
        if w.send() != FORWARD:
            break
    w.run(0.5)
    assert len([e for e in w.cev if e.kind == E.PaymentDue.kind]) == 2


def test_a_contract_proposed_while_the_prepayment_is_verified_waits_for_its_credit():
    """The first contract is used up in grace before its prepayment (4 contracts' worth) is
    confirmed; the next one is proposed meanwhile. The buyer waits for the PAID that brings the
    credit and pays the next one from it, instead of paying from the wallet a second time."""
    w = CreditWorld(prepay=4 * COST, confirm_after=1.0, pr=pricing(contract_kb=100, grace_kb=100))
    w.cl.policy = policy(data_renewal_kb=0)
    assert w.send() == HELD
    w.run(0.1)
    assert [e.kind for e in w.gev].count(E.PaymentReceived.kind) == 1 and not w.kinds("gw").count(E.Paid.kind)
    sent = 0
    while w.send() == FORWARD:              # contract 1 used up in grace, its payment not yet final
        sent += 1
    assert sent >= 90 and w.gw.status(w.now)["peers"][PEER.hex()]["open_proposals"] == 1   # contract 2
    w.run(0.3)
    assert E.Paid.kind not in w.kinds("gw") and E.AwaitingCredit.kind in w.kinds("cl")
    assert "prepaid credit" in w.cl.status(w.now)["destinations"][DST + "/32"]["reason"]
    w.run(1.5)
    paid = [e for e in w.gev if e.kind == E.Paid.kind]
    assert [e.from_credit for e in paid] == [False, True], paid
    assert [e.kind for e in w.cev].count(E.PaymentDue.kind) == 1
    assert w.gw.credit.balance(PEER) == 100 and w.cl.book(PEER).credit_msat == 100
    assert w.send() == FORWARD and w.released


def test_a_contract_does_not_wait_long_for_credit_that_does_not_come():
    """The prepayment is not confirmed in CREDIT_WAIT_S (an on-chain payment waiting for a block):
    the next contract is accepted and paid from the wallet, as without prepay."""
    w = CreditWorld(prepay=4 * COST, confirm_after=60.0, pr=pricing(contract_kb=100, grace_kb=100,
                                                                      grace_time_s=120))
    w.cl.policy = policy(data_renewal_kb=0)
    w.send()
    w.run(0.1)
    while w.send() == FORWARD:
        pass
    w.run(ce.CREDIT_WAIT_S - 0.5)
    assert [e.kind for e in w.cev].count(E.Accepted.kind) == 1
    w.run(1.0)
    assert [e.kind for e in w.cev].count(E.PaymentDue.kind) == 2
    # the peer's one grace went to contract 1 (protocol/grace.py): contract 2 forwards once paid
    assert w.send() == HELD


def test_credit_that_falls_short_is_refused_and_the_client_pays():
    w = CreditWorld()
    w.cl.book(PEER).credit_msat = 500                  # the client believes it has credit; the gateway has none
    assert w.send() == HELD
    w.run(0.5)
    fails = [e for e in w.gev if e.kind == E.PaymentFailed.kind]
    assert fails and "not enough prepaid credit" in fails[0].reason
    assert [e.kind for e in w.cev].count(E.PaymentDue.kind) == 1
    assert w.gw_contract()[0]["state"] == "PAID" and w.cl.book(PEER).credit_msat == 0


def test_no_funds_stops_buying_says_so_once_and_resumes_when_funded():
    w = CreditWorld(funds=10)               # less than one contract: accepted once (grace), then
    w.wallet_ok = False
    assert w.send() == HELD
    w.run(0.5)
    [due] = [e for e in w.cev if e.kind == E.PaymentDue.kind]
    w.cl.payment_impossible(PEER, due.contract_id, "cashu: insufficient funds", 10)   # the daemon's wallet
    w.step()
    assert w.kinds("cl").count(E.NoFunds.kind) == 1
    assert "insufficient funds" in w.cl.status(w.now)["no_funds_reason"]
    w.run(6)                                 # grace ends unpaid: revoked
    assert w.gw_contract()[0]["state"] == "REVOKED"
    w.run(11)
    assert w.send() == HELD                  # a new offer: declined without an answer
    w.run(0.5)
    w.cl.payment_impossible(PEER, "x", "again", 10)
    assert w.kinds("cl").count(E.NoFunds.kind) == 1 and w.kinds("cl").count(E.Declined.kind) == 1
    assert E.Accepted.kind not in w.kinds("cl")[w.kinds("cl").index(E.NoFunds.kind):]
    w.cl.set_funds(10_000, w.now)
    w.wallet_ok = True
    w.step()
    assert E.FundsRestored.kind in w.kinds("cl") and w.cl.status(w.now)["no_funds_reason"] == ""
    w.run(11)
    assert w.send() == HELD
    w.run(0.5)
    assert any(c["state"] == "PAID" for c in w.gw_contract())
    assert w.send() == FORWARD


def test_prepay_falls_back_to_the_cost_when_the_wallet_cannot_prepay():
    w = CreditWorld(prepay=1000, funds=60)
    w.send()
    w.run(0.5)
    [pay] = [e for e in w.cev if e.kind == E.PaymentDue.kind]
    assert pay.pay_msat == COST and w.gw.credit.balance(PEER) == 0


def test_memory_credit_spends_once_per_contract():
    mc = MemoryCredit({PEER: 100})
    assert mc.spend(PEER, 60, "a") == 40
    assert mc.spend(PEER, 60, "a") == 40       # again for the same contract: nothing more
    assert mc.spend(PEER, 60, "b") is None and mc.balance(PEER) == 40


def test_client_credit_survives_a_snapshot():
    w = CreditWorld(prepay=4 * COST)
    w.send()
    w.run(0.5)
    snap = w.cl.snapshot()
    from tunnelgate.protocol.buyer import Buyer
    cl = Buyer(policy())
    cl.restore(snap, w.now)
    assert cl.book(PEER).credit_msat == 150


def test_pay_for_a_contract_the_gateway_lost_is_taken_as_credit_and_revoked():
    from tunnelgate.protocol import messages as m
    gw = Seller(pricing())
    gw.on_message(PEER, m.Pay("lost1", 500, "dummy", "proof"), 1000.0)
    [(peer, rev)] = gw.take_outgoing()
    assert isinstance(rev, m.Revoke) and rev.contract_id == "lost1" and "credit" in rev.reason
    [ev] = gw.take_events()
    assert ev.kind == E.PaymentReceived.kind and ev.unknown and ev.cost_msat == 0
    gw.payment_confirmed("lost1", 1001.0)       # the daemon credits it; the engine has nothing to do
    assert gw.take_outgoing() == []
