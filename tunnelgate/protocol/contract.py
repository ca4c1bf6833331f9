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
from dataclasses import dataclass, field

from tunnelgate.money import BYTES_PER_KB, cost_msat


@dataclass(frozen=True)
class Event:
    """Something the daemon logs, streams to the control socket or persists.

    kind: see the EV_* names in gateway.py / client.py; ``data`` holds kind-specific
    extras (e.g. payment method and proof, counters)."""
    kind: str
    contract_id: str | None = None
    peer: bytes | None = None
    destination: str | None = None
    reason: str = ""
    amount_msat: int = 0
    data: dict = field(default_factory=dict)


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
    """One contract as both engines keep it.  Hot-path fields: stop_at, stop_bytes,
    used, up, down (mutated by the meter)."""

    __slots__ = ("contract_id", "peer", "key", "plen", "destination", "price", "limit_kb",
                 "time_s", "methods", "account", "round", "grace_s", "grace_kb", "state",
                 "created_at", "accepted_at", "activated_at", "expires_at", "grace_until",
                 "paid", "stop_at", "stop_bytes", "used", "up", "down", "reason",
                 "gw_up", "gw_down", "last_usage_sent", "last_usage_at", "renew_asked", "renew_at",
                 "renew_final", "quarter_at", "mismatch", "ended_at", "credit", "saved_used")

    def __init__(self, contract_id: str, peer: bytes, key: bytes, plen: int, destination: str,
                 price: int, limit_kb: int, time_s: int, methods: tuple[str, ...] = (),
                 account: str = "", round: int = 1, grace_s: int = 0, grace_kb: int = 0,
                 created_at: float = 0.0):
        self.contract_id, self.peer, self.key, self.plen = contract_id, peer, key, plen
        self.destination, self.price, self.limit_kb, self.time_s = destination, price, limit_kb, time_s
        self.methods, self.account, self.round = tuple(methods), account, round
        self.grace_s, self.grace_kb = grace_s, grace_kb
        self.state = State.PROPOSED
        self.created_at = created_at
        self.accepted_at = self.activated_at = self.expires_at = self.grace_until = None
        self.ended_at = None
        self.paid = False
        self.stop_at = 0.0
        self.stop_bytes = 0
        self.used = self.up = self.down = 0
        self.gw_up = self.gw_down = 0
        self.last_usage_sent = -1
        self.reason = ""
        self.renew_asked = False
        self.renew_at = 0               # client: used bytes at which to renew, or to look again
        self.renew_final = 0            # client: the renewal point by margin (see ClientEngine._arm)
        self.quarter_at = None          # client: when a quarter of the contract was used
        self.mismatch = False
        self.last_usage_at = 0.0
        self.credit = False             # paid (gateway) / to be paid (client) from prepaid credit
        self.saved_used = -1            # gateway: ``used`` as last persisted (incremental saves)

    @property
    def limit_bytes(self) -> int:
        return self.limit_kb * BYTES_PER_KB

    @property
    def cost_msat(self) -> int:
        return cost_msat(self.price, self.limit_kb)

    def apply(self, event: Ev) -> State:
        self.state = next_state(self.state, event)
        return self.state

    def arm(self, grace: bool) -> None:
        """Recompute the hot-path limits after a state change (active contracts only)."""
        if self.state is State.PAID and self.expires_at is not None:
            self.stop_at, self.stop_bytes = self.expires_at, self.limit_bytes
        elif self.state is State.GRACE and self.expires_at is not None:
            gb = self.grace_kb * BYTES_PER_KB if grace else 0
            self.stop_at = min(self.expires_at, self.grace_until)
            self.stop_bytes = min(self.limit_bytes, gb)
        else:
            self.stop_at, self.stop_bytes = 0.0, 0

    def disarm(self) -> None:
        self.stop_at, self.stop_bytes = 0.0, 0

    def view(self, now: float) -> dict:
        left_s = None
        if self.expires_at is not None and self.state in FORWARDING:
            left_s = max(0, int(self.expires_at - now))
        return {"contract_id": self.contract_id, "peer": self.peer.hex() if self.peer else "",
                "destination": self.destination, "state": self.state.value, "price": self.price,
                "limit_kb": self.limit_kb, "time_s": self.time_s, "cost_msat": self.cost_msat,
                "used": self.used, "up": self.up, "down": self.down,
                "data_left": max(0, self.limit_bytes - self.used), "time_left_s": left_s,
                "paid": self.paid, "reason": self.reason, "round": self.round,
                "credit": self.credit}

    # --- persistence -----------------------------------------------------------------------

    _PERSIST = ("contract_id", "plen", "destination", "price", "limit_kb", "time_s", "account",
                "round", "grace_s", "grace_kb", "created_at", "accepted_at", "activated_at",
                "expires_at", "grace_until", "paid", "used", "up", "down", "gw_up", "gw_down",
                "reason", "ended_at", "credit")

    _ADDED = frozenset({"credit"})     # keys newer than the first snapshots: optional on load

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self._PERSIST}
        d["peer"] = self.peer.hex()
        d["key"] = self.key.hex()
        d["methods"] = list(self.methods)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Contract":
        c = cls(d["contract_id"], bytes.fromhex(d["peer"]), bytes.fromhex(d["key"]), d["plen"],
                d["destination"], d["price"], d["limit_kb"], d["time_s"], tuple(d["methods"]),
                d["account"], d["round"], d["grace_s"], d["grace_kb"], d["created_at"])
        for k in cls._PERSIST:
            if k in d or k not in cls._ADDED:
                setattr(c, k, d[k])
        c.state = State(d["state"])
        return c
