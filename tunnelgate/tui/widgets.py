"""Formatting for the TUI: table rows, quota and budget bars, event lines, rates.

Pure functions over the daemon's `status`/`events` dicts, so they are tested
without a terminal.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Iterable, Sequence

from rich.text import Text

from ..money import format_msat, format_price
from ..status_text import human_bytes

DASH = "–"   # a value the daemon does not report

STATE_STYLE = {
    "PAID": "bold green", "GRACE": "bold yellow", "ACCEPTED": "cyan", "PROPOSED": "cyan",
    "EXHAUSTED": "dim", "EXPIRED": "dim", "REVOKED": "bold red", "REJECTED": "red", "NO_DEAL": "red",
}
EVENT_STYLE = {
    "paid": "green", "accepted": "cyan", "activated": "cyan", "proposed": "dim", "payment_due": "dim",
    "payment_received": "dim", "renewal_requested": "dim", "exhausted": "", "expired": "",
    "rejected": "yellow", "no_deal": "yellow", "no_deal_expired": "dim", "withdrawn": "dim",
    "held_dropped": "yellow", "budget_exceeded": "bold red", "payment_failed": "bold red",
    "revoked": "bold red", "usage_mismatch": "bold red", "protocol_violation": "bold red",
    "warning": "bold yellow",
}


def duration(s: float | None) -> str:
    if s is None:
        return DASH
    s = int(s)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def rate(bytes_per_s: float) -> str:
    return f"{human_bytes(bytes_per_s)}/s"


def msat_rate(msat_per_s: float) -> str:
    """Spend/revenue per minute, exact enough for people."""
    return f"{format_msat(int(round(msat_per_s * 60)))}/min"


def bar(frac: float, width: int = 10, style: str | None = None) -> Text:
    frac = max(0.0, min(1.0, frac))
    full = int(round(frac * width))
    if style is None:
        style = "green" if frac < 0.7 else "yellow" if frac < 0.9 else "red"
    return Text.assemble(("█" * full, style), ("░" * (width - full), "dim"))


def quota(used: int, limit_bytes: int, width: int = 10) -> Text:
    frac = used / limit_bytes if limit_bytes else 0.0
    t = bar(frac, width)
    t.append(f" {int(100 * min(frac, 1.0)):3d}%")
    return t


def short_key(key: str | None, n: int = 8) -> str:
    return (key or "")[:n] or DASH


# --- tables --------------------------------------------------------------------------

# the most useful first: narrow terminals scroll the rest
CONTRACT_COLUMNS = ("destination", "state", "used / limit", "quota", "time left", "cost", "price/KB", "id")
GATEWAY_COLUMNS = ("gateway", "state", "rtt", "loss", "price/KB", "spent", "record", "carries", "key")
PEER_COLUMNS = ("address", "endpoint", "contracts", "bytes", "revenue", "grace", "key")


def contract_row(c: dict, with_peer: bool = False) -> list:
    limit = c.get("limit_kb", 0) * 1000
    used = c.get("used", 0)
    state = c.get("state", "?")
    cost = format_msat(c.get("cost_msat", 0))
    row = [c.get("destination") or DASH,
           Text(state, style=STATE_STYLE.get(state, "")),
           f"{human_bytes(used)} / {human_bytes(limit)}",
           quota(used, limit),
           duration(c.get("time_left_s")),
           Text(cost + (" paid" if c.get("paid") else ""), style="" if c.get("paid") else "yellow"),
           format_price(c.get("price", 0)).removesuffix("/KB"),
           c.get("contract_id") or DASH]
    if with_peer:
        row.insert(0, short_key(c.get("peer")))
    return row


GATEWAY_STATE_STYLE = {"up": "bold green", "down": "bold red", "unverified": "yellow"}


def gateway_record(rec: dict, verdict: str | None) -> Text:
    """A gateway's record in a cell: paid of bought, delivered, and what went wrong."""
    parts = [f"{rec.get('paid', 0)}/{rec.get('bought', 0)} paid", f"{rec.get('delivered', 0)} served"]
    for key, word in (("unserved", "unserved"), ("disagreements", "disputed"), ("failed_handshakes", "hs failed")):
        if rec.get(key):
            parts.append(f"{rec[key]} {word}")
    return Text(", ".join(parts), style="bold red" if verdict else "")


def gateway_row(g: dict) -> list:
    """One row of the client's gateways panel, from `tunnelgate gateways --json`."""
    state = g.get("state") or "?"
    rtt, loss, price = g.get("rtt_ms"), g.get("loss"), g.get("price_per_kb")
    dests = g.get("destinations") or []
    return [g.get("label") or short_key(g.get("public_key")),
            Text(state, style=GATEWAY_STATE_STYLE.get(g.get("state"), "")),
            DASH if rtt is None else f"{rtt:.1f} ms",
            DASH if loss is None else f"{100 * loss:.0f}%",
            DASH if price is None else format_price(price).removesuffix("/KB"),
            format_msat(g.get("spent_msat") or 0),
            gateway_record(g.get("record") or {}, g.get("verdict")),
            " ".join(dests) if dests else DASH,
            short_key(g.get("public_key"), 12)]


def peer_rows(st: dict) -> list[list]:
    """Gateway peers: address, endpoint, contracts, bytes, revenue (cost of paid contracts)."""
    market = st.get("market") or {}
    contracts = market.get("contracts") or []
    standing = market.get("peers") or {}
    by_peer: dict[str, list[dict]] = {}
    for c in contracts:
        by_peer.setdefault(c.get("peer") or "", []).append(c)
    rows = []
    keys = [p.get("public_key") for p in st.get("peers") or []]
    # peers that hold contracts but have no session right now are still shown
    keys += [k for k in by_peer if k and k not in keys]
    info = {p.get("public_key"): p for p in st.get("peers") or []}
    for key in keys:
        p = info.get(key, {})
        mine = by_peer.get(key, [])
        grace = (standing.get(key) or {}).get("grace")
        rows.append([p.get("address") or DASH, p.get("endpoint") or DASH, str(len(mine)),
                     human_bytes(sum(c.get("used", 0) for c in mine)),
                     format_msat(sum(c.get("cost_msat", 0) for c in mine if c.get("paid"))),
                     DASH if grace is None else ("yes" if grace else "no"),
                     short_key(key, 12)])
    return rows


# --- budgets -------------------------------------------------------------------------

BUDGETS = (("hour", "max_spend_per_hour"), ("day", "max_spend_per_day"), ("total", "max_spend_total"))


def budget_text(spend: dict, policy, wallet: dict | None, width: int = 6) -> Text:
    """Spend in the last hour/day/total against the [policy] limits, and the wallet."""
    out = Text()
    cells = []
    for key, attr in BUDGETS:
        used = int(spend.get(key, 0) or 0)
        limit = getattr(policy, attr, None) if policy is not None else None
        cells.append((key, format_msat(used), "no limit" if limit is None else format_msat(limit), used, limit))
    w_used = max(len(c[1]) for c in cells)
    for key, used_s, limit_s, used, limit in cells:
        out.append(f"{key:<6}", style="bold")
        if limit:
            out.append_text(bar(used / limit, width))
            out.append(f" {int(100 * min(used / limit, 1.0)):3d}%  ")
        else:
            out.append(" " * (width + 7))
        out.append(f"{used_s:>{w_used}} / {limit_s}\n")
    balance = (wallet or {}).get("balance_msat")
    out.append("wallet", style="bold")
    out.append(f" {DASH if balance is None else format_msat(balance)}")
    return out


# --- events ------------------------------------------------------------------------------

def event_line(ev: dict, with_peer: bool = False) -> Text:
    ts = ev.get("ts") or 0
    kind = ev.get("kind") or "?"
    t = Text(time.strftime("%H:%M:%S", time.localtime(ts)) + " ", style="dim")
    t.append(f"{kind:<18}", style=EVENT_STYLE.get(kind, ""))
    if with_peer:
        t.append(f" {short_key(ev.get('peer'))}")
    parts = [ev.get("contract_id") or "", ev.get("destination") or ""]
    if ev.get("amount_msat"):
        parts.append(format_msat(ev["amount_msat"]))
    t.append(" " + " ".join(p for p in parts if p))
    if ev.get("reason"):
        t.append(f": {ev['reason']}", style=EVENT_STYLE.get(kind) or "yellow")
    return t


def note_line(message: str, style: str = "", ts: float | None = None) -> Text:
    t = Text(time.strftime("%H:%M:%S", time.localtime(ts if ts is not None else time.time())) + " ", style="dim")
    t.append(message, style=style)
    return t


# --- rates ---------------------------------------------------------------------------------

class Rates:
    """Per-second rates of monotonic counters between successive samples.

    feed(t, values) with t in seconds (the daemon's uptime_s, so replayed snapshots
    give the same rates); a counter going backwards (daemon restart) starts over.
    """

    def __init__(self, n: int, keep: int = 300):
        self.n = n
        self.last: tuple[float, tuple[float, ...]] | None = None
        self.history: deque[tuple[float, ...]] = deque(maxlen=keep)
        self.steps: deque[tuple[float, tuple[float, ...]]] = deque(maxlen=keep)   # (dt, deltas)

    def feed(self, t: float, values: Sequence[float]) -> tuple[float, ...] | None:
        values = tuple(float(v) for v in values)
        last, self.last = self.last, (t, values)
        if last is None:
            return None
        dt = t - last[0]
        deltas = tuple(v - p for v, p in zip(values, last[1]))
        if dt <= 0 or any(d < 0 for d in deltas):
            if dt == 0 and not any(d < 0 for d in deltas):
                self.last = last   # same instant (uptime is rounded): wait for the next one
            return None
        rates = tuple(d / dt for d in deltas)
        self.history.append(rates)
        self.steps.append((dt, deltas))
        return rates

    def series(self, i: int) -> list[float]:
        return [r[i] for r in self.history]

    def latest(self, i: int) -> float:
        return self.history[-1][i] if self.history else 0.0

    def recent(self, i: int, seconds: float = 60.0) -> tuple[float, float]:
        """(total of counter i, seconds covered) over the most recent `seconds`."""
        total = covered = 0.0
        for dt, deltas in reversed(self.steps):
            if covered >= seconds:
                break
            total += deltas[i]
            covered += dt
        return total, covered


def sparkline_data(xs: Iterable[float], window: int = 300) -> list[float]:
    """The last `window` samples, zero-padded in front so the x axis is time (the
    sparkline stretches short data over its whole width otherwise)."""
    xs = list(xs)[-window:]
    return [0.0] * (window - len(xs)) + xs
