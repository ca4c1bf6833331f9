"""Typed contract events: what the engines tell their daemon.

Each event is a frozen dataclass naming the side that saw it ("buyer" or "seller") and the
counterpart (the other side's public key), with the fields of its kind.  ``kind`` is the
name the event log, `status --json`, `events` and the TUI know it by; ``record()`` is the one
place an event becomes that dict (the daemon's edge, daemon/market.py EventLog).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

BUYER, SELLER = "buyer", "seller"


@dataclass(frozen=True, slots=True)
class ContractEvent:
    side: str
    counterpart: bytes | None
    contract_id: str | None = None
    destination: str | None = None
    reason: str = ""
    amount_msat: int = 0

    kind: ClassVar[str] = ""
    _BASE: ClassVar[frozenset] = frozenset({"side", "counterpart", "contract_id", "destination",
                                            "reason", "amount_msat"})

    def extras(self) -> dict:
        """The kind's own fields, as the event log's ``data``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self._BASE}


def _kind(name: str):
    def deco(cls):
        cls.kind = name
        return cls
    return deco


# --- both sides ---------------------------------------------------------------------------

@_kind("accepted")
@dataclass(frozen=True, slots=True)
class Accepted(ContractEvent):
    queued: bool = False
    from_credit: bool = False


@_kind("rejected")
@dataclass(frozen=True, slots=True)
class Rejected(ContractEvent):
    counter_price: int | None = None
    counter_kb: int | None = None
    counter_s: int | None = None


@_kind("no_deal")
@dataclass(frozen=True, slots=True)
class NoDeal(ContractEvent):
    retry_after_s: int = 0


@_kind("activated")
@dataclass(frozen=True, slots=True)
class Activated(ContractEvent):
    state: str = ""


@_kind("paid")
@dataclass(frozen=True, slots=True)
class Paid(ContractEvent):
    credit_msat: int | None = None
    from_credit: bool = False


@_kind("payment_failed")
@dataclass(frozen=True, slots=True)
class PaymentFailed(ContractEvent):
    credit_msat: int | None = None


@dataclass(frozen=True, slots=True)
class Ended(ContractEvent):
    """A contract ended: the counts of both sides (the seller's own are up/down)."""
    up: int = 0
    down: int = 0
    gateway_up: int | None = None
    gateway_down: int | None = None


@_kind("exhausted")
@dataclass(frozen=True, slots=True)
class Exhausted(Ended):
    pass


@_kind("expired")
@dataclass(frozen=True, slots=True)
class Expired(Ended):
    pass


@_kind("revoked")
@dataclass(frozen=True, slots=True)
class Revoked(Ended):
    pass


@_kind("protocol_violation")
@dataclass(frozen=True, slots=True)
class ProtocolViolation(ContractEvent):
    pass


# --- seller -------------------------------------------------------------------------------

@_kind("proposed")
@dataclass(frozen=True, slots=True)
class Proposed(ContractEvent):
    price: int = 0
    round: int = 1


@_kind("no_deal_expired")
@dataclass(frozen=True, slots=True)
class NoDealExpired(ContractEvent):
    pass


@_kind("withdrawn")
@dataclass(frozen=True, slots=True)
class Withdrawn(ContractEvent):
    pass


@_kind("payment_received")
@dataclass(frozen=True, slots=True)
class PaymentReceived(ContractEvent):
    """The daemon verifies ``proof`` and calls payment_confirmed or payment_failed."""
    method: str = ""
    proof: str = ""
    cost_msat: int = 0
    account: str = ""
    unknown: bool = False         # for no contract this run knows: kept as credit


@_kind("held_dropped")
@dataclass(frozen=True, slots=True)
class HeldDropped(ContractEvent):
    packets: int = 0


@_kind("proposals_suppressed")
@dataclass(frozen=True, slots=True)
class ProposalsSuppressed(ContractEvent):
    dropped: int = 0
    open_proposals: int = 0
    unpaid: int = 0


@_kind("upstream_wait")
@dataclass(frozen=True, slots=True)
class UpstreamWait(ContractEvent):
    """A relay holds a destination's first packets while it buys upstream (protocol/resale.py)."""


@_kind("refunded")
@dataclass(frozen=True, slots=True)
class Refunded(ContractEvent):
    """A paid contract stopped before its end (its upstream ended): the daemon credits
    ``amount_msat``, what the unforwarded bytes cost, to the peer's prepaid credit."""
    used: int = 0


# --- a relay's resale policy (protocol/resale.py) -------------------------------------------

@_kind("upstream_renewal_due")
@dataclass(frozen=True, slots=True)
class UpstreamRenewalDue(ContractEvent):
    """Buy ``limit_kb`` more upstream for the destination: what was sold downstream is close to
    (or beyond) what is left upstream."""
    limit_kb: int = 0
    sold_bytes: int = 0
    supply_bytes: int = 0


@_kind("upstream_lost")
@dataclass(frozen=True, slots=True)
class UpstreamLost(ContractEvent):
    """The upstream contracts for the destination ended: what was sold for it is stopped."""
    stopped: tuple[str, ...] = ()


# --- buyer --------------------------------------------------------------------------------

@_kind("budget_exceeded")
@dataclass(frozen=True, slots=True)
class BudgetExceeded(ContractEvent):
    pass


@_kind("quote")
@dataclass(frozen=True, slots=True)
class Quote(ContractEvent):
    price: int = 0
    limit_kb: int = 0
    time_s: int = 0
    methods: tuple[str, ...] = ()
    grace_s: int = 0
    grace_kb: int = 0
    max_price: int = 0
    acceptable: bool = False
    chain: tuple[tuple[str, int], ...] = ()     # (public key in base64, price) per hop, seller last
    chain_problem: str = ""                       # why the chain does not add up ("" if it does)
    retry_after_s: int = 0                        # > 0: it would say NO_DEAL now, ask after this


@_kind("declined")
@dataclass(frozen=True, slots=True)
class Declined(ContractEvent):
    pass


@_kind("payment_due")
@dataclass(frozen=True, slots=True)
class PaymentDue(ContractEvent):
    """The daemon pays ``pay_msat`` (at least amount_msat, the surplus kept as credit) with one
    of ``methods`` to ``account``, then calls Buyer.paid."""
    methods: tuple[str, ...] = ()
    account: str = ""
    pay_msat: int = 0


@_kind("renewal_requested")
@dataclass(frozen=True, slots=True)
class RenewalRequested(ContractEvent):
    limit_kb: int | None = None


@_kind("usage_mismatch")
@dataclass(frozen=True, slots=True)
class UsageMismatch(ContractEvent):
    own: int = 0
    gateway: int = 0
    own_up: int = 0
    own_down: int = 0
    gateway_up: int = 0
    gateway_down: int = 0


@_kind("no_funds")
@dataclass(frozen=True, slots=True)
class NoFunds(ContractEvent):
    funds_msat: int | None = None
    credit_msat: int = 0


@_kind("funds_restored")
@dataclass(frozen=True, slots=True)
class FundsRestored(ContractEvent):
    funds_msat: int | None = None


# --- the client's market of gateways (daemon/gateways.py) -----------------------------------

@_kind("destination_moved")
@dataclass(frozen=True, slots=True)
class DestinationMoved(ContractEvent):
    """A destination (or a default route, "0.0.0.0/0") now goes to ``counterpart`` (None: no
    gateway can carry it); ``reason`` says why it moved."""
    previous: str | None = None      # the gateway it went to before (base64 key)
    gateway: str | None = None       # the one it goes to now (base64 key)


@_kind("gateway_state")
@dataclass(frozen=True, slots=True)
class GatewayState(ContractEvent):
    """A gateway came up, went down (no answer while sending, a failed handshake) or was
    found to take money without service."""
    state: str = ""
    gateway: str | None = None


@_kind("awaiting_credit")
@dataclass(frozen=True, slots=True)
class AwaitingCredit(ContractEvent):
    """A proposal is answered once the surplus of a prepayment still being confirmed lands as
    credit (``due_msat`` on its way, ``credit_msat`` known now): paying it from the wallet
    would prepay a second time."""
    credit_msat: int = 0
    due_msat: int = 0
