"""`tunnelgate history`: past contracts and payments, read from the daemon's
database (works while the daemon is stopped)."""

from __future__ import annotations

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
    except sqlite3.Error as e:
        raise HistoryError(f"cannot read {db}: {e}") from None
    finally:
        con.close()
    out: dict[str, dict] = {}
    for ts, kind, cid, peer, dest, reason, amount, data in rows:
        c = out.setdefault(cid, {"contract_id": cid, "destination": dest, "peer": peer, "started": ts,
                                 "ended": None, "state": "proposed", "paid_msat": 0, "reason": "",
                                 "up": None, "down": None})
        if kind == "paid":
            c["paid_msat"] = amount
        if kind in ("accepted", "activated", "paid") and c["ended"] is None:
            c["state"] = kind
        if kind in ENDINGS:
            c["state"], c["ended"], c["reason"] = kind, ts, reason or ""
            extra = json.loads(data or "{}")
            c["up"], c["down"] = extra.get("up"), extra.get("down")
    return list(out.values())


def render(items: list[dict]) -> str:
    import time
    lines = [f"{'started':<19}  {'destination':<18} {'state':<15} {'paid':>10}  id"]
    for c in items:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c["started"]))
        lines.append(f"{started:<19}  {c['destination'] or '-':<18} {c['state']:<15} "
                     f"{format_msat(c['paid_msat']):>10}  {c['contract_id']}"
                     + (f"  ({c['reason']})" if c["reason"] else ""))
    total = sum(c["paid_msat"] for c in items)
    lines.append(f"{len(items)} contracts, {sum(1 for c in items if c['paid_msat'])} paid, total {format_msat(total)}")
    return "\n".join(lines)
