"""Money-relevant contract state survives a crash of either side (issue 17, item 2).

Both engines run over the in-memory link of test_contract_engines, with the daemons'
persistence discipline: changed records are written through (Saver.take/write) before the
messages that make them count go out, a contract ended on the data path is written before
more is forwarded, byte counters are saved only by the periodic save (never called here,
so every crash loses them), and the gateway's payments go through a real Journal (applied
before the engine hears of them). A crash drops the engine without any save; the restart
restores it from the store and reconciles it with the journal, as the daemons do.
"""

import threading

import pytest
from engine_world import DST, PEER, World, policy, pricing

from tunnelgate.protocol import events as E
from tunnelgate import packet as pk
from tunnelgate.daemon.market import EventLog, Saver
from tunnelgate.daemon.recovery import reconcile
from tunnelgate.daemon.store import Store
from tunnelgate.history import contracts as history
from tunnelgate.meter import FORWARD
from tunnelgate.payments.base import Journal
from tunnelgate.protocol import buyer as ce
from tunnelgate.protocol import seller as ge
from tunnelgate.protocol.channel import Channel
from tunnelgate.protocol.buyer import Buyer
from tunnelgate.protocol.contract import State
from tunnelgate.protocol.seller import Seller

PEER_TEXT = "peer"


class Durable(World):
    def __init__(self, tmp_path, pr=None, po=None, **kw):
        super().__init__(pr=pr, po=po, loss=0, reorder=0, **kw)
        self.pr, self.po = pr or pricing(), po or policy()
        self.tmp = tmp_path
        self.gstore, self.cstore = Store(tmp_path / "gw.db"), Store(tmp_path / "cl.db")
        self.journal = Journal(tmp_path / "payments.sqlite")
        self.glock, self.clock = threading.Lock(), threading.Lock()
        self.gsaver = Saver(self.gstore, self.gw, self.glock)
        self.csaver = Saver(self.cstore, self.cl, self.clock)
        self.gevents, self.cevents = EventLog(self.gstore), EventLog(self.cstore)
        self.gw_down = False
        self.pay_hold = False             # True: payments are journaled, not yet applied
        self.crash_after_journal = False  # crash the gateway right after the journal's commit
        self.credits = []

    # the daemons' _pump: records (and events) first, then what makes them count
    def _pump(self):
        now = self.now
        with self.gsaver.wlock, self.glock:
            gout = self.gw.take_outgoing()
            gevs = self.gw.take_events()
            released = self.gw.take_released()
            taken = self.gsaver.take() if self.gw.has_changes else None
        for e in gevs:
            self.gevents.add(e)
        if taken is not None:
            self.gsaver.write(taken, self.gevents)
        with self.csaver.wlock, self.clock:
            cout = self.cl.take_outgoing()
            cevs = self.cl.take_events()
            ctaken = self.csaver.take() if self.cl.durable_seq != self.csaver.written_seq else None
        for e in cevs:
            self.cevents.add(e)
        if ctaken is not None:
            self.csaver.write(ctaken, self.cevents)
        if not self.gw_down:
            for peer, msg in gout:
                self.gch.send(_enc(msg))
            for peer, p in released:
                self.released.append(p)
        for _, msg in cout:
            self.cch.send(_enc(msg))
        for e in cevs:
            self.cev.append(e)
            if e.kind == E.PaymentDue.kind and self.autopay:
                self.cl.paid(PEER, e.contract_id, "dummy", "proof-" + e.contract_id)
                self.cch.send(_enc(self.cl.take_outgoing()[-1][1]))
        for e in gevs:
            self.gev.append(e)
            if e.kind == E.PaymentReceived.kind and not self.gw_down:
                self._journal_payment(e)

    def _journal_payment(self, e):
        cid = e.contract_id
        self.journal.insert(f"dummy:{e.proof}", cid, PEER_TEXT, "dummy", e.amount_msat, "confirmed")
        if self.pay_hold:
            return
        c = self.gw.find(cid)
        usable = c is not None and c.state is not State.REVOKED
        cost = e.cost_msat
        surplus = max(0, e.amount_msat - cost) if usable else e.amount_msat
        left = self.journal.settle(cid, PEER_TEXT, surplus, f"{'surplus' if usable else 'recovered'}:{cid}",
                                   "test")
        if self.crash_after_journal:
            self.crash_gateway()
            return
        if usable:
            self.gw.payment_confirmed(cid, self.now, credit_msat=left)

    def step(self, dt=0.02):
        if self.gw_down:                   # the client alone: its frames to the gateway are lost
            self.now += dt
            self.cl.poll(self.now)
            self._pump()
            self.cch.poll(self.now)
            due = [x for x in self.link if x[0] <= self.now]
            self.link = [x for x in self.link if x[0] > self.now]
            for _, dst, fr in due:             # what the gateway sent before it died arrives
                for raw in dst.receive(fr, self.now):
                    self.cl.on_message(PEER, _dec(raw), self.now)
            self._pump()
            return
        super().step(dt)

    def send(self, dst=DST, size=1000):
        """One packet as the gateway's data path meters it: an ended contract is written
        through before the packet (metered under the next one) leaves."""
        p = ge.pk.dst_and_length(_ip(dst, size))
        d, length = p
        with self.clock:
            self.cl.outbound(d, length, self.now)
        with self.glock:
            r = self.gw.outbound(PEER, d, length, _ip(dst, size), self.now)
        if self.gw.durable_seq != self.gsaver.written_seq:
            self.gsaver.write_through()
        if r == FORWARD:
            self.delivered += length
        return r

    def crash_gateway(self):
        """kill -9: nothing more is saved; the link loses what was in flight."""
        self.gw = Seller(self.pr)
        self.gw_down = True
        self.link = [x for x in self.link if x[1] is not self.gch]

    def restart_gateway(self):
        lock = threading.Lock()
        self.glock = lock
        self.gsaver = Saver(self.gstore, self.gw, lock)
        self.gsaver.restore(self.now)
        self.credits += reconcile(self.journal, self.gstore.contract_states(), self.gw, lock, self.now)
        self.gch = Channel(epoch=self.gch.epoch + 1)
        self.gw_down = False

    def crash_and_restart_client(self):
        self.cl = Buyer(self.po)
        self.clock = threading.Lock()
        self.csaver = Saver(self.cstore, self.cl, self.clock)
        self.csaver.restore(self.now)
        self.cch = Channel(epoch=self.cch.epoch + 1)

    def gw_records(self):
        return {c["contract_id"]: c for c in self.gw.contracts(PEER, self.now, history=True)}


def _enc(msg):
    from tunnelgate.protocol.messages import encode
    return encode(msg)


def _dec(raw):
    from tunnelgate.protocol.messages import decode
    return decode(raw)


def _ip(dst, size):
    from engine_world import ip4
    return ip4(dst, size)


def _first_paid(w):
    w.send()
    w.run(1)
    [c] = w.gw.contracts(PEER, w.now)
    assert c["state"] == "PAID"
    return c


def test_payment_applied_in_the_journal_but_not_recorded_pays_the_contract_after_restart(tmp_path):
    w = Durable(tmp_path)
    w.crash_after_journal = True        # the journal committed; the engine never heard of it
    w.send()
    w.run(1)
    assert w.gw_down
    cid = w.journal.records("confirmed")[0].contract_id
    assert w.journal.records("confirmed")[0].applied
    w.restart_gateway()
    c = w.gw_records()[cid]
    assert c["paid"] and c["state"] == "PAID", c      # paid, not forgotten, and no credit either
    assert w.journal.credit_balance(PEER_TEXT) == 0 and not w.credits
    w.crash_after_journal = False
    w.run(1)
    assert w.send() == FORWARD
    assert len(w.journal.records("confirmed")) == 1   # the client did not pay again


def test_a_payment_no_record_knows_becomes_credit_once(tmp_path):
    w = Durable(tmp_path)
    _first_paid(w)
    # a payment the journal applied for a contract the records never had (e.g. older data)
    w.journal.insert("dummy:x", "ghost", PEER_TEXT, "dummy", 7000, "confirmed")
    w.journal.settle("ghost", PEER_TEXT, 0, "surplus:ghost", "test")
    w.crash_gateway()
    w.restart_gateway()
    assert w.journal.credit_balance(PEER_TEXT) == 7000
    w.crash_gateway()
    w.restart_gateway()
    assert w.journal.credit_balance(PEER_TEXT) == 7000          # idempotent


def test_an_exhausted_contract_stays_ended_after_a_crash_before_any_periodic_save(tmp_path):
    w = Durable(tmp_path, pr=pricing(contract_kb=10), po=policy(data_renewal_kb=5))
    first = _first_paid(w)
    while w.gw_records()[first["contract_id"]]["state"] == "PAID":
        w.send()
        w.step()
    assert w.gw_records()[first["contract_id"]]["state"] == "EXHAUSTED"
    live_before = {c["contract_id"] for c in w.gw.contracts(PEER, w.now)}
    w.crash_gateway()
    w.restart_gateway()
    c = w.gw_records()[first["contract_id"]]
    assert c["state"] == "EXHAUSTED" and c["used"] >= c["limit_kb"] * 1000, c
    assert first["contract_id"] not in {x["contract_id"] for x in w.gw.contracts(PEER, w.now)}
    assert {x["contract_id"] for x in w.gw.contracts(PEER, w.now)} == live_before
    # what is served next is metered against the next contract, never the ended one
    w.run(0.5)
    assert w.send() == FORWARD
    assert w.gw_records()[first["contract_id"]]["used"] == c["used"]


def test_contract_ended_on_the_data_path_is_on_disk_before_the_next_packet(tmp_path):
    w = Durable(tmp_path, pr=pricing(contract_kb=10), po=policy(data_renewal_kb=5))
    first = _first_paid(w)
    w.run(1)                                  # the renewal is accepted and paid
    while w.send() == FORWARD and w.gw_records()[first["contract_id"]]["state"] == "PAID":
        pass                                  # no step: only the data path's write-through runs
    rows = w.gstore.contract_states()
    assert rows[first["contract_id"]] == ("EXHAUSTED", True)


def test_an_accepted_contract_in_grace_survives_and_is_paid_after_restart(tmp_path):
    w = Durable(tmp_path)
    w.pay_hold = True                   # the payment arrives but is not settled before the crash
    w.send()
    w.run(0.3)
    [c] = w.gw.contracts(PEER, w.now)
    assert c["state"] == "GRACE" and not c["paid"]
    w.crash_gateway()
    w.pay_hold = False
    w.journal = Journal(tmp_path / "payments2.sqlite")   # the proof never reached the journal
    w.restart_gateway()
    [c2] = w.gw.contracts(PEER, w.now)
    assert c2["contract_id"] == c["contract_id"] and c2["state"] == "GRACE"
    assert w.send() == FORWARD                # served in its grace, not proposed anew
    # the client re-sends its proof on the new session (the daemon does this on a handshake)
    w.cl.paid(PEER, c["contract_id"], "dummy", "proof-" + c["contract_id"])
    w.run(1)
    assert w.gw_records()[c["contract_id"]]["paid"]
    assert len(w.journal.records("confirmed")) == 1


def test_a_proposal_survives_so_an_accept_that_crosses_the_restart_counts(tmp_path):
    w = Durable(tmp_path)
    w.send()
    w.step()                                  # PROPOSE written, then sent
    [p] = w.gw.contracts(PEER, w.now)
    assert p["state"] == "PROPOSED"
    w.crash_gateway()
    w.run(0.2)                                # the client accepts; the ACCEPT is lost meanwhile
    assert [e.kind for e in w.cev].count("accepted") == 1
    w.restart_gateway()
    w.cch.reset(w.cch.epoch + 1)              # the client's channel re-sends what was unacked
    w.run(1)
    c = w.gw_records()[p["contract_id"]]
    assert c["state"] == "PAID" and c["paid"], c
    assert len(w.journal.records("confirmed")) == 1


def test_a_revoked_contract_whose_payment_was_applied_leaves_credit(tmp_path):
    w = Durable(tmp_path)
    _first_paid(w)
    [c] = w.gw.contracts(PEER, w.now)
    rec = w.gw.find(c["contract_id"])
    # as if revoked before its payment arrived, that payment applied by the journal only
    rec.paid = False
    w.gw._revoke(w.gw.meter.peers[PEER][rec.key], rec, "test", w.now)
    w._pump()
    w.crash_gateway()
    w.restart_gateway()
    assert w.journal.credit_balance(PEER_TEXT) == rec.cost_msat
    assert rec.contract_id not in {x["contract_id"] for x in w.gw.contracts(PEER, w.now)}


def test_client_restart_keeps_what_it_accepted_and_paid_and_no_ended_contract(tmp_path):
    w = Durable(tmp_path, pr=pricing(contract_kb=10), po=policy(data_renewal_kb=5))
    first = _first_paid(w)
    while w.gw_records()[first["contract_id"]]["state"] == "PAID":
        w.send()
        w.step()
    w.run(0.5)
    before = {c.contract_id: (c.state, c.paid) for c in w.cl.contract_list()}
    assert first["contract_id"] not in before and before
    w.crash_and_restart_client()              # no periodic save ever ran
    after = {c.contract_id: (c.state, c.paid) for c in w.cl.contract_list()}
    assert after == before
    assert w.cl.spent_total == sum(c.cost_msat for c in w.gw.contract_list(PEER, history=True)
                                   if c.accepted_at is not None)


def test_gateway_history_agrees_with_the_records_after_a_crash(tmp_path):
    w = Durable(tmp_path, pr=pricing(contract_kb=10), po=policy(data_renewal_kb=5))
    first = _first_paid(w)
    while w.send() == FORWARD and w.gw_records()[first["contract_id"]]["state"] == "PAID":
        pass                                  # ended on the data path: no event stored yet
    w.crash_gateway()
    h = {c["contract_id"]: c for c in history(tmp_path / "gw.db")}
    assert h[first["contract_id"]]["state"] == "exhausted"
    assert h[first["contract_id"]]["paid_msat"] == first["cost_msat"]


@pytest.mark.parametrize("kills", [3])
def test_repeated_gateway_crashes_during_rollover_pay_each_contract_once(tmp_path, kills):
    w = Durable(tmp_path, pr=pricing(contract_kb=10, grace_kb=5), po=policy(data_renewal_kb=5))
    _first_paid(w)
    for k in range(kills):
        for _ in range(60 + 7 * k):
            w.send()
            w.step()
        w.crash_gateway()
        w.run(0.1)
        w.restart_gateway()
        w.cch.reset(w.cch.epoch + 1)
        w.run(0.5)
    for _ in range(40):
        w.send()
        w.step()
    w.run(2)
    gw = {c.contract_id: c for c in w.gw.contract_list(PEER, history=True)}
    cl = {c.contract_id: c for c in w.cl.contract_list(history=True)}
    accepted_cl = {cid for cid, c in cl.items() if c.accepted_at is not None}
    accepted_gw = {cid for cid, c in gw.items() if c.accepted_at is not None}
    assert accepted_cl == accepted_gw
    paid = [r.contract_id for r in w.journal.records("confirmed")]
    assert len(paid) == len(set(paid))                         # no contract paid twice
    assert set(paid) <= accepted_gw
    for cid in paid:
        assert gw[cid].paid, cid                               # every payment is a paid contract
    for c in gw.values():
        assert c.used <= c.limit_bytes + 1000, (c.contract_id, c.used)   # one packet of overshoot
    assert w.journal.credit_balance(PEER_TEXT) == 0


def test_a_contract_used_up_exactly_ends_when_the_next_is_accepted(tmp_path):
    # a burst that fills the contract to its last byte leaves no packet to end it: the
    # ACCEPT of the next one must end it (final USAGE, a tombstone), not leave it live
    w = Durable(tmp_path, pr=pricing(contract_kb=10, usage_interval_s=60), po=policy(data_renewal_kb=0))
    first = _first_paid(w)
    c = w.gw.find(first["contract_id"])
    with w.glock:
        assert w.gw.outbound_burst(PEER, pk.addr_bytes(DST), c.limit_bytes - c.used, 1, w.now) == FORWARD
    assert c.used == c.limit_bytes and c.state is State.PAID
    w.cl.outbound(pk.addr_bytes(DST), 1, w.now)       # the client's count: used up too
    w.gw.on_message(PEER, ge.m.Request(first["destination"]), w.now)
    w.run(1)
    assert c.state is State.EXHAUSTED
    assert c.contract_id not in {x["contract_id"] for x in w.gw.contracts(PEER, w.now)}
    assert w.gstore.contract_states()[c.contract_id] == ("EXHAUSTED", True)
