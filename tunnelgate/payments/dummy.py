"""The ``dummy`` backend: in-process, NO real money, for demos and tests.

Proofs are ``dummy:<contract>:<amount_msat>:<tag>`` where tag is a short
HMAC over contract and amount (catches typos/tampering, proves nothing).
The payee still enforces what the real ones do: idempotency, one proof per
contract, no underpayment, so tests of contracts mean something.

Settings: payer ``balance_msat`` (default 10^12: plenty) and ``fee_msat``
(default 0); payee ``pending`` (default false: verify confirms at once; true:
verify says pending and the next poll confirms, to exercise grace).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any, Mapping

from .base import Journal, PayeeBackend, PayerBackend, PaymentError, Terms, Verdict, proof_key, to_thread

log = logging.getLogger("tunnelgate.payments.dummy")
_KEY = b"tunnelgate-dummy-payments"
NOTICE = "dummy payment backend: no real payment happens (demo/test only)"


def _tag(contract_id: str, amount_msat: int) -> str:
    return hmac.new(_KEY, f"{contract_id}:{amount_msat}".encode(), hashlib.sha256).hexdigest()[:16]


def make_proof(contract_id: str, amount_msat: int) -> str:
    if ":" in contract_id:
        raise PaymentError(f"dummy: contract id {contract_id!r} must not contain ':'")
    return f"dummy:{contract_id}:{amount_msat}:{_tag(contract_id, amount_msat)}"


class DummyPayer(PayerBackend):
    name = "dummy"
    real_money = False

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        settings = settings or {}
        self._balance = int(settings.get("balance_msat", 10**12))
        self._fee = int(settings.get("fee_msat", 0))
        self._paid: dict[str, str] = {}
        log.warning(NOTICE)

    @property
    def notice(self) -> str:
        return NOTICE

    async def pay(self, terms: Terms) -> str:
        if terms.contract_id in self._paid:  # paying again for the same contract: same proof
            return self._paid[terms.contract_id]
        need = terms.amount_msat + self._fee
        if need > self._balance:
            raise PaymentError(
                f"dummy wallet: insufficient funds: have {self._balance} msat, need {need} msat "
                "(set payment.balance_msat higher; no real money is involved)")
        proof = make_proof(terms.contract_id, terms.amount_msat)
        self._balance -= need
        self._paid[terms.contract_id] = proof
        log.info("dummy payment (no real money): contract %s, %d msat", terms.contract_id, terms.amount_msat)
        return proof

    async def balance_msat(self) -> int:
        return self._balance

    def fee_msat(self, amount_msat: int) -> int:
        return self._fee


class DummyPayee(PayeeBackend):
    name = "dummy"
    real_money = False

    def __init__(self, settings: Mapping[str, Any] | None, journal: Journal) -> None:
        super().__init__(journal)
        settings = settings or {}
        self._pending_first = bool(settings.get("pending", False))
        log.warning(NOTICE)

    @property
    def notice(self) -> str:
        return NOTICE

    async def account_for(self, contract_id: str) -> str:
        return "dummy"

    async def verify(self, proof: str, terms: Terms) -> Verdict:
        if not isinstance(proof, str):
            return Verdict("invalid", "dummy: proof must be a string")
        parts = proof.split(":")
        if len(parts) != 4 or parts[0] != "dummy":
            return Verdict("invalid", "dummy: not a dummy proof (want dummy:<contract>:<msat>:<tag>)")
        _, contract, amount_s, tag = parts
        try:
            amount = int(amount_s)
        except ValueError:
            return Verdict("invalid", f"dummy: amount {amount_s!r} is not an integer")
        if not hmac.compare_digest(tag, _tag(contract, amount)):
            return Verdict("invalid", "dummy: proof tag does not match (tampered or mistyped)")
        # the journal (SQLite, fsync per commit) runs off the event loop, in group commits; the
        # payment is still on disk before the verdict is returned (before the contract is paid)
        return await self.journal.batched(self._record, contract, amount, terms)

    def _record(self, contract: str, amount: int, terms: Terms) -> Verdict:
        with self.journal.atomic():     # the checks and the insert as one step
            return self._record_locked(contract, amount, terms)

    def _record_locked(self, contract: str, amount: int, terms: Terms) -> Verdict:
        key = proof_key("dummy", contract, str(amount))
        pre = self._precheck(key, terms)
        if isinstance(pre, Verdict):
            return pre
        if pre is not None:  # the same proof again, same contract: the same payment
            return pre.verdict()
        if contract != terms.contract_id:
            return Verdict("invalid", f"dummy: proof is for contract {contract}, not {terms.contract_id}")
        if amount < terms.amount_msat:
            return Verdict("invalid", f"dummy: underpaid: proof is worth {amount} msat, "
                                      f"contract needs {terms.amount_msat} msat")
        status = "pending" if self._pending_first else "confirmed"
        rec, _ = self.journal.insert(key, terms.contract_id, terms.peer, "dummy", amount, status,
                                     "no real money (dummy backend)")
        log.info("dummy payment accepted (no real money): contract %s, %d msat", contract, amount)
        return rec.verdict()

    async def poll(self, contract_id: str) -> Verdict:
        return await to_thread(self._poll, contract_id)

    def _poll(self, contract_id: str) -> Verdict:
        rec = self.journal.for_contract(contract_id)
        if rec is None:
            return Verdict("invalid", f"no payment recorded for contract {contract_id}")
        if rec.status == "pending":
            rec = self.journal.update(rec.key, status="confirmed")
        return rec.verdict()
