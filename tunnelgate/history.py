"""`tunnelgate history`: past contracts and payments, read from the daemon's
database (works while the daemon is stopped)."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

from .money import format_msat

ENDINGS = {"exhausted", "expired", "revoked", "no_deal", "rejected", "withdrawn", "budget_exceeded"}


class HistoryError(Exception):
    pass


def contracts(db: Path) -> list[dict]:
    if not db.exists():
        raise HistoryError(f"no database at {db}: the daemon has not run with this state_dir yet")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT ts, kind, contract_id, peer, destination, reason, amount_msat, data "
                           "FROM events WHERE contract_id IS NOT NULL ORDER BY id").fetchall()
        # a client's payments as sent: with [payment] prepay_msat more than a contract's cost
        has_sent = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='client_payments'"
                               ).fetchone()
        sent = {cid: (amount, state) for cid, amount, state in con.execute(
            "SELECT contract_id, amount_msat, state FROM client_payments")} if has_sent else {}
        has_records = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='contracts'"
                                  ).fetchone()
        records = [json.loads(d) for (d,) in con.execute("SELECT data FROM contracts")] if has_records else []
    except sqlite3.Error as e:
        raise HistoryError(f"cannot read {db}: {e}") from None
    finally:
        con.close()
    out: dict[str, dict] = {}
    for ts, kind, cid, peer, dest, reason, amount, data in rows:
        c = out.setdefault(cid, {"contract_id": cid, "destination": dest, "peer": peer, "started": ts,
                                 "ended": None, "state": "proposed", "paid_msat": 0, "reason": "",
                                 "up": None, "down": None, "from_credit": False, "sent_msat": 0,
                                 "sent_confirmed": False})
        if kind == "paid":
            c["paid_msat"] = amount
            c["from_credit"] = bool(json.loads(data or "{}").get("from_credit"))
        if kind in ("accepted", "activated", "paid") and c["ended"] is None:
            c["state"] = kind
        if kind in ENDINGS:
            c["state"], c["ended"], c["reason"] = kind, ts, reason or ""
            extra = json.loads(data or "{}")
            c["up"], c["down"] = extra.get("up"), extra.get("down")
    for d in records:
        _overlay(out, d)
    for cid, (amount, state) in sent.items():
        if cid in out:
            out[cid]["sent_msat"], out[cid]["sent_confirmed"] = amount, state == "confirmed"
    return list(out.values())


_RECORD_STATE = {"EXHAUSTED": "exhausted", "EXPIRED": "expired", "REVOKED": "revoked", "PAID": "paid",
                 "GRACE": "activated", "ACCEPTED": "accepted", "PROPOSED": "proposed"}


def _overlay(out: dict[str, dict], d: dict) -> None:
    """A gateway's contract record (written through at every state change) over what the
    events say: events of the last moments before a crash may be missing, the record is not."""
    from .money import cost_msat
    state = _RECORD_STATE.get(d.get("state", ""))
    if state is None:
        return
    cid = d["contract_id"]
    peer = base64.b64encode(bytes.fromhex(d["peer"])).decode() if d.get("peer") else None
    c = out.setdefault(cid, {"contract_id": cid, "destination": d["destination"], "peer": peer,
                             "started": d.get("created_at"), "ended": None, "state": "proposed",
                             "paid_msat": 0, "reason": "", "up": None, "down": None,
                             "from_credit": False, "sent_msat": 0, "sent_confirmed": False})
    if d.get("paid") and not c["paid_msat"]:
        c["paid_msat"] = cost_msat(d["price"], d["limit_kb"])
        c["from_credit"] = bool(d.get("credit"))
    if state in ENDINGS:
        c["state"], c["reason"] = state, d.get("reason") or c["reason"]
        c["ended"] = d.get("ended_at") or c["ended"]
        c["up"], c["down"] = d.get("up"), d.get("down")
    elif c["ended"] is None:
        c["state"] = state


def render(items: list[dict]) -> str:
    import time
    lines = [f"{'started':<19}  {'destination':<18} {'state':<15} {'paid':>10}  id"]
    for c in items:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c["started"]))
        lines.append(f"{started:<19}  {c['destination'] or '-':<18} {c['state']:<15} "
                     f"{format_msat(c['paid_msat']):>10}  {c['contract_id']}"
                     + ("  (from prepaid credit)" if c.get("from_credit") else "")
                     + (f"  ({c['reason']})" if c["reason"] else ""))
    total = sum(c["paid_msat"] for c in items)
    summary = f"{len(items)} contracts, {sum(1 for c in items if c['paid_msat'])} paid, total {format_msat(total)}"
    sent = sum(c.get("sent_msat", 0) for c in items)
    if sent and sent != sum(c["paid_msat"] for c in items if not c.get("from_credit")):
        # a client that prepays: what left the wallet, and what of it no contract has used yet
        pending = sum(c.get("sent_msat", 0) for c in items if not c.get("sent_confirmed"))
        credit = sent - pending - total
        summary += f"; sent {format_msat(sent)} from the wallet"
        if pending:
            summary += f", {format_msat(pending)} of it not yet confirmed by the gateway"
        if credit > 0:
            summary += f", {format_msat(credit)} of it prepaid credit at the gateway, not used yet"
    lines.append(summary)
    return "\n".join(lines)


def resale(db: Path) -> dict:
    """A relay's money per destination (revenue downstream, cost upstream, margin), as its
    daemon last saved it (daemon/relay.py); empty when it never resold anything."""
    from .protocol.resale_ledger import ResaleLedger
    ledger = ResaleLedger()
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT data FROM snapshots WHERE name='resale_ledger'").fetchone()
        finally:
            con.close()
    except sqlite3.Error as e:
        raise HistoryError(f"cannot read {db}: {e}") from None
    if row:
        ledger.restore(json.loads(row[0]))
    return ledger.view()


def render_relay(down: list[dict], up: list[dict], money: dict) -> str:
    """A relay's history: what it sold, what it bought, and the margin per destination."""
    lines = ["sold downstream:", render(down), "", "bought upstream:", render(up), "",
             f"{'destination':<18} {'revenue':>12} {'cost':>12} {'margin':>12}"]
    for dest, m in list(money["destinations"].items()) + [("total", money["total"])]:
        lines.append(f"{dest:<18} {format_msat(m['revenue_msat']):>12} {format_msat(m['cost_msat']):>12} "
                     f"{format_msat(m['margin_msat']):>12}")
    return "\n".join(lines)
