"""Contract state machine, as a table (state, event) -> state, used by both engines.

States::

    PROPOSED --accept_active--> GRACE ----paid----> PAID
        |    \\--accept_wait--> ACCEPTED (queued behind the current contract, or
        |                        waiting for payment when the peer has no grace)
        |                          |--activate--> GRACE (or stays ACCEPTED: no grace)
        |                          '--paid------> PAID (queued paid contracts wait in PAID)
        |--reject--> REJECTED      (a new PROPOSE, with a new id, may follow)
        '--no_deal / withdraw --> NO_DEAL
    GRACE | PAID --exhaust--> EXHAUSTED, --expire--> EXPIRED, --revoke--> REVOKED
    ACCEPTED | GRACE --revoke--> REVOKED (payment not confirmed in time)

A contract is *usable* (forwards traffic) only when it is the current contract of
its flow and in GRACE or PAID; the hot-path limits are kept in ``stop_at`` /
``stop_bytes`` (0 when not usable) so the meter needs no state lookup.

Pairs not in the table raise ``TransitionError`` naming both.  Late but harmless
inputs (a payment confirmed after the contract ended, a duplicate PAID, a failed
payment attempt during grace) have explicit "stay" entries.
"""

from __future__ import annotations

import enum

from tunnelgate.money import BYTES_PER_KB
from tunnelgate.protocol import chain as ch
from tunnelgate.protocol.terms import Terms


class State(enum.Enum):
    PROPOSED = "PROPOSED"
    ACCEPTED = "ACCEPTED"
    GRACE = "GRACE"
    PAID = "PAID"
    REJECTED = "REJECTED"
    NO_DEAL = "NO_DEAL"
    EXHAUSTED = "EXHAUSTED"
    EXPIRED = "EXPIRED"
    REVOKED = "REVOKED"


class Ev(enum.Enum):
    ACCEPT_ACTIVE = "accept_active"      # accepted and becomes current with grace
    ACCEPT_WAIT = "accept_wait"          # accepted, queued or waiting for payment
    REJECT = "reject"
    NO_DEAL = "no_deal"
    WITHDRAW = "withdraw"                # proposal unanswered / superseded
    ACTIVATE = "activate"                # becomes the current contract of its flow (with grace)
    PAID = "paid"
    PAYMENT_FAILED = "payment_failed"    # one payment attempt failed; grace still runs
    EXHAUST = "exhaust"
    EXPIRE = "expire"
    REVOKE = "revoke"


class TransitionError(Exception):
    def __init__(self, state: State, event: Ev):
        super().__init__(f"contract: no transition from state {state.value} on event {event.value}")
        self.state, self.event = state, event


S, E = State, Ev
TABLE: dict[tuple[State, Ev], State] = {
    (S.PROPOSED, E.ACCEPT_ACTIVE): S.GRACE,
    (S.PROPOSED, E.ACCEPT_WAIT): S.ACCEPTED,
    (S.PROPOSED, E.REJECT): S.REJECTED,
    (S.PROPOSED, E.NO_DEAL): S.NO_DEAL,
    (S.PROPOSED, E.WITHDRAW): S.NO_DEAL,

    (S.ACCEPTED, E.ACTIVATE): S.GRACE,
    (S.ACCEPTED, E.PAID): S.PAID,
    (S.ACCEPTED, E.PAYMENT_FAILED): S.ACCEPTED,
    (S.ACCEPTED, E.REVOKE): S.REVOKED,
    (S.ACCEPTED, E.EXPIRE): S.EXPIRED,

    (S.GRACE, E.PAID): S.PAID,
    (S.GRACE, E.PAYMENT_FAILED): S.GRACE,
    (S.GRACE, E.EXHAUST): S.EXHAUSTED,
    (S.GRACE, E.EXPIRE): S.EXPIRED,
    (S.GRACE, E.REVOKE): S.REVOKED,

    (S.PAID, E.ACTIVATE): S.PAID,
    (S.PAID, E.PAID): S.PAID,
    (S.PAID, E.EXHAUST): S.EXHAUSTED,
    (S.PAID, E.EXPIRE): S.EXPIRED,
    (S.PAID, E.REVOKE): S.REVOKED,

    # late confirmations of a payment made in time are recorded, the state stays
    (S.EXHAUSTED, E.PAID): S.EXHAUSTED,
    (S.EXPIRED, E.PAID): S.EXPIRED,
    (S.REVOKED, E.PAID): S.REVOKED,
    (S.EXHAUSTED, E.PAYMENT_FAILED): S.EXHAUSTED,
    (S.EXPIRED, E.PAYMENT_FAILED): S.EXPIRED,
    (S.REVOKED, E.PAYMENT_FAILED): S.REVOKED,
}

TERMINAL = frozenset({S.REJECTED, S.NO_DEAL, S.EXHAUSTED, S.EXPIRED, S.REVOKED})
FORWARDING = frozenset({S.GRACE, S.PAID})


def next_state(state: State, event: Ev) -> State:
    try:
        return TABLE[(state, event)]
    except KeyError:
        raise TransitionError(state, event) from None


def allowed(state: State, event: Ev) -> bool:
    return (state, event) in TABLE


class Contract:
    """One side's view of one contract: the agreed ``terms`` (shared, frozen) and this side's
    mutable state.  Hot-path fields: stop_at, stop_bytes, used, up, down (mutated by the
    meter).  Each side adds its own bookkeeping in a subclass (SellerContract, BuyerContract),
    all in slots: tens of thousands of these live at a gateway."""

    __slots__ = ("terms", "peer", "state", "created_at", "accepted_at", "activated_at", "expires_at",
                 "grace_until", "ended_at", "paid", "credit", "stop_at", "stop_bytes", "used", "up",
                 "down", "reason")

    _SIDE: tuple[str, ...] = ()        # a subclass's persisted fields (optional on load)

    def __init__(self, terms: Terms, peer: bytes, created_at: float = 0.0):
        self.terms, self.peer = terms, peer
        self.state = State.PROPOSED
        self.created_at = created_at
        self.accepted_at = self.activated_at = self.expires_at = self.grace_until = None
        self.ended_at = None
        self.paid = False
        self.credit = False             # paid (seller) / to be paid (buyer) from prepaid credit
        self.stop_at = 0.0
        self.stop_bytes = 0
        self.used = self.up = self.down = 0
        self.reason = ""

    # the terms, read through (not on the per-packet path)
    contract_id = property(lambda self: self.terms.contract_id)
    destination = property(lambda self: self.terms.destination)
    key = property(lambda self: self.terms.key)
    plen = property(lambda self: self.terms.plen)
    price = property(lambda self: self.terms.price)
    limit_kb = property(lambda self: self.terms.limit_kb)
    time_s = property(lambda self: self.terms.time_s)
    methods = property(lambda self: self.terms.methods)
    account = property(lambda self: self.terms.account)
    round = property(lambda self: self.terms.round)
    grace_s = property(lambda self: self.terms.grace_s)
    grace_kb = property(lambda self: self.terms.grace_kb)

    @property
    def limit_bytes(self) -> int:
        return self.terms.limit_kb * BYTES_PER_KB

    @property
    def cost_msat(self) -> int:
        return self.terms.cost_msat

    def apply(self, event: Ev) -> State:
        self.state = next_state(self.state, event)
        return self.state

    def arm(self, grace: bool) -> None:
        """Recompute the hot-path limits after a state change (active contracts only)."""
        if self.state is State.PAID and self.expires_at is not None:
            self.stop_at, self.stop_bytes = self.expires_at, self.limit_bytes
        elif self.state is State.GRACE and self.expires_at is not None:
            gb = self.terms.grace_kb * BYTES_PER_KB if grace else 0
            self.stop_at = min(self.expires_at, self.grace_until)
            self.stop_bytes = min(self.limit_bytes, gb)
        else:
            self.stop_at, self.stop_bytes = 0.0, 0

    def disarm(self) -> None:
        self.stop_at, self.stop_bytes = 0.0, 0

    def view(self, now: float) -> dict:
        t = self.terms
        left_s = None
        if self.expires_at is not None and self.state in FORWARDING:
            left_s = max(0, int(self.expires_at - now))
        return {"contract_id": t.contract_id, "peer": self.peer.hex() if self.peer else "",
                "destination": t.destination, "state": self.state.value, "price": t.price,
                "limit_kb": t.limit_kb, "time_s": t.time_s, "cost_msat": t.cost_msat,
                "used": self.used, "up": self.up, "down": self.down,
                "data_left": max(0, self.limit_bytes - self.used), "time_left_s": left_s,
                "paid": self.paid, "reason": self.reason, "round": t.round,
                "credit": self.credit, "chain": ch.view(t.chain)}

    # --- persistence (the same JSON record as before the terms were split out) -----------

    _TERMS = ("contract_id", "plen", "destination", "price", "limit_kb", "time_s", "account",
              "round", "grace_s", "grace_kb")
    _STATE = ("created_at", "accepted_at", "activated_at", "expires_at", "grace_until", "paid",
              "used", "up", "down", "reason", "ended_at", "credit")
    _ADDED = frozenset({"credit"})     # keys newer than the first snapshots: optional on load

    def to_dict(self) -> dict:
        t = self.terms
        d = {k: getattr(t, k) for k in self._TERMS}
        for k in self._STATE + self._SIDE:
            d[k] = getattr(self, k)
        d["peer"] = self.peer.hex()
        d["key"] = t.key.hex()
        d["methods"] = list(t.methods)
        d["state"] = self.state.value
        if t.chain:
            d["chain"] = [[k.hex(), p] for k, p in t.chain]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Contract":
        terms = Terms(d["contract_id"], d["destination"], bytes.fromhex(d["key"]), d["plen"], d["price"],
                      d["limit_kb"], d["time_s"], tuple(d["methods"]), d["account"], d["round"],
                      d["grace_s"], d["grace_kb"],
                      tuple((bytes.fromhex(k), p) for k, p in d.get("chain", ())))
        c = cls(terms, bytes.fromhex(d["peer"]), d["created_at"])
        for k in cls._STATE:
            if k in d or k not in cls._ADDED:
                setattr(c, k, d[k])
        for k in cls._SIDE:
            if k in d:
                setattr(c, k, d[k])
        c.state = State(d["state"])
        return c
