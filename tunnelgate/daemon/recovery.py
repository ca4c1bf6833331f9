"""After a restart, the payment journal is the authority on what was paid.

The gateway writes a contract's state through at every change, but a crash can still fall
between the journal's commit (a payment applied, a credit spent) and the contract's record.
``reconcile`` closes that gap: every applied payment is a contract recorded paid or the
peer's credit, never neither, and credit spent on a contract no record has comes back.
Idempotent: every credit it gives has its own ref in the journal.
"""

from __future__ import annotations

import threading

from ..protocol.contract import State


def reconcile(journal, known: dict[str, tuple[str, bool]], engine, lock: threading.Lock,
              now: float) -> list[tuple[str, str, int, int, str]]:
    """``known``: contract id -> (state, paid) of every record (Store.contract_states).
    Marks paid the contracts whose applied payment the records miss; returns the credits
    given, as (contract id, peer, msat, balance after, why)."""
    credits = []
    for rec in journal.records("confirmed"):
        cid = rec.contract_id
        if not rec.applied:
            continue                        # the daemon settles those (_recover_payments)
        state = known.get(cid)
        if state is not None and state[1]:
            continue                        # recorded paid
        if state is not None and state[0] != State.REVOKED.value:
            # the contract took it (one ended long ago, no longer in memory, was served: the
            # payment stays its own)
            with lock:
                c = engine.find(cid)
                if c is not None:
                    c.credit = c.credit or journal.paid_from_credit(cid)
                    engine.payment_confirmed(cid, now)
            continue
        # no contract took it (none recorded, or revoked): what is not credit yet becomes credit
        owed = rec.amount_msat - journal.credited(cid)
        if owed > 0:
            left = journal.add_credit(rec.peer, owed, f"recovered:{cid}", cid,
                                      "payment applied to a contract no record has (restart)")
            credits.append((cid, rec.peer, owed, left, "payment for a contract this gateway no longer "
                            "has (restart): kept as credit for the peer"))
    for cid, peer, msat in journal.credit_spends():
        state = known.get(cid)
        if state is None:
            left = journal.add_credit(peer, msat, f"refund:{cid}", cid,
                                      "credit spent on a contract no record has (restart): refunded")
            credits.append((cid, peer, msat, left, "credit spent on a contract this gateway no longer "
                            "has (restart): refunded"))
        elif not state[1]:
            with lock:
                c = engine.find(cid)
                if c is not None and not c.paid and c.state is not State.REVOKED:
                    c.credit = True
                    engine.payment_confirmed(cid, now)
    return credits
