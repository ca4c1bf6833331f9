"""`tunnelgate status` for people: the fields of `status --json`, laid out."""

from __future__ import annotations

import time

from .money import format_msat, format_price

SESSION_DROPS = ("bad_mac", "replay", "malformed", "unknown_index", "stale_handshake", "expired")


def _age(ts: float | None) -> str:
    if not ts:
        return "never"
    s = int(time.time() - ts)
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago"


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _duration(s: int | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _bar(used: int, limit: int, width: int = 10) -> str:
    frac = min(1.0, used / limit) if limit else 0.0
    full = int(round(frac * width))
    return "#" * full + "." * (width - full)


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return ["  " + fmt.format(*header).rstrip()] + ["  " + fmt.format(*map(str, r)).rstrip() for r in rows]


def contracts_table(contracts: list[dict], with_peer: bool = False) -> list[str]:
    if not contracts:
        return ["  (none)"]
    rows = []
    for c in contracts:
        limit = c["limit_kb"] * 1000
        pct = 100 * c["used"] // limit if limit else 0
        row = [c["destination"], c["state"], format_price(c["price"]),
               f"{human_bytes(c['used'])}/{human_bytes(limit)} {_bar(c['used'], limit)} {pct}%",
               "queued" if c.get("time_left_s") is None and c["state"] in ("PAID", "ACCEPTED")
               else _duration(c.get("time_left_s")), format_msat(c["cost_msat"]) + (" paid" if c.get("paid") else ""),
               c["contract_id"]]
        if with_peer:
            row.insert(0, (c.get("peer") or "")[:12])
        rows.append(row)
    header = ["destination", "state", "price/KB", "used/limit", "time left", "cost", "id"]
    if with_peer:
        header.insert(0, "peer")
    return _table(rows, header)


def render(st: dict) -> str:
    stats = st.get("stats", {})
    market = st.get("market", {})
    lines = []
    if st["role"] == "client":
        state = "connected" if st.get("connected") else "connecting"
        lines += [
            f"client    {state}, pid {st['pid']}, up {_duration(int(st['uptime_s']))}",
            f"gateway   {st.get('gateway')}  key {st.get('gateway_public_key')}",
            f"tunnel    {st['tun']} {st.get('address') or '(no address yet)'}  routes {', '.join(st.get('routes', []))}",
            f"handshake {_age(st.get('last_handshake'))}",
            f"kill sw.  {'on: if this daemon dies, nothing its routes cover leaves outside the tunnel' if st.get('kill_switch') else 'off'}",
        ]
    else:
        lines += [
            f"gateway   pid {st['pid']}, up {_duration(int(st['uptime_s']))}, listening on {st.get('listen')}",
            f"tunnel    {st['tun']} {st.get('address')}  upstream {st.get('upstream_interface')}",
        ]
    priv = st.get("privileges")
    if priv:
        caps = "all capabilities" if priv["uid"] == 0 else ", ".join(priv["capabilities"]) or "no capabilities"
        lines.append(f"runs as   {priv['user']} (uid {priv['uid']}), {caps}")
    pay = st.get("payment")
    if pay:
        money = "" if pay.get("real_money", True) else f"  ({pay.get('notice') or 'no real money'})"
        lines.append(f"payment   {pay['backend']}{money}")
    lines.append(f"traffic   sent {human_bytes(stats.get('tx_bytes', 0))} ({stats.get('tx_packets', 0)} packets), "
                 f"received {human_bytes(stats.get('rx_bytes', 0))} ({stats.get('rx_packets', 0)} packets)")
    if st["role"] == "client" and market:
        spend = market.get("spend", {})
        budgets = st.get("budgets", {})

        def against(key, limit_key):
            limit = budgets.get(limit_key)
            return format_msat(spend.get(key, 0)) + (f" of {format_msat(limit)}" if limit is not None else "")
        lines.append(f"spent     this hour {against('hour', 'max_spend_per_hour')}, today "
                     f"{against('day', 'max_spend_per_day')}, total {against('total', 'max_spend_total')}")
        wallet = st.get("wallet")
        if wallet:
            note = ""
            if wallet.get("low_balance"):
                note = f"  (below the warning level {format_msat(wallet.get('low_balance_msat', 0))})"
            lines.append(f"wallet    {format_msat(wallet.get('balance_msat') or 0)}{note}")
            if wallet.get("no_funds"):
                lines.append(f"buying    stopped: {wallet['no_funds']}")
        if st.get("credit_msat"):
            lines.append(f"credit    {format_msat(st['credit_msat'])} prepaid at the gateway")
        if st.get("settings", {}).get("pause_buying"):
            lines.append("buying    paused (tunnelgate set -c FILE pause_buying=false resumes)")
        if market.get("budget_reason"):
            lines.append(f"budget    {market['budget_reason']}")
        lines.append("contracts")
        lines += contracts_table(market.get("contracts", []))
        for dest, d in sorted(market.get("destinations", {}).items()):
            if d.get("no_deal_reason"):
                lines.append(f"no deal   {dest}: {d['no_deal_reason']} (retry in {d.get('retry_in_s', 0)} s)")
    elif market:
        contracts = market.get("contracts", [])
        peers = st.get("peers", [])
        lines.append(f"peers     {len(peers)}")
        leases = st.get("leases")
        if leases:
            lines.append(f"addresses {leases['used']} of {leases['pool']} leased, {leases['reclaimed']} reclaimed "
                         f"(idle after {leases['idle_s']:g} s)")
        fl = st.get("flood")
        if fl:
            # daemon/handshakes.py: what never reached a key exchange, by reason
            lines.append(f"handshake {fl['key_exchanges']} key exchanges; refused: {fl['bad_mac1']} bad MAC1, "
                         f"{fl['rate_limited']} rate-limited, {fl['queue_full']} queue full; "
                         f"{fl['cookie_sent']} cookie replies" + (" (under load now)" if fl["under_load"] else ""))
        g = market.get("grace")
        if g:
            # protocol/grace.py: one grace per peer until it pays; strangers share a budget
            lines.append(f"grace     {g['per_peer_kb']} KB / {g['per_peer_s']} s per peer until it pays; "
                         f"strangers {g['strangers_used_kb_last_min']} of {g['strangers_kb_per_min']} KB a "
                         f"minute used in the last minute ({g['strangers_left_kb']} KB left now), "
                         f"{g['peers_in_grace']} peer(s) in grace")
        by_peer: dict[str, list[dict]] = {}
        for c in contracts:
            by_peer.setdefault(c.get("peer") or "", []).append(c)
        rows = []
        for p in peers:
            mine = by_peer.get(p["public_key"], [])
            standing = market.get("peers", {}).get(p["public_key"], {})
            rows.append([p["address"] or "-", p["endpoint"] or "-", len(mine),
                         human_bytes(sum(c["used"] for c in mine)),
                         format_msat(sum(c["cost_msat"] for c in mine if c.get("paid"))),
                         format_msat(standing.get("credit_msat", 0)),
                         _grace_cell(standing), p["public_key"]])
        if rows:
            lines += _table(rows, ["address", "endpoint", "contracts", "bytes", "paid", "credit", "grace", "key"])
        advert = st.get("advert")
        if advert:
            lines.append(advert_line(advert, time.time()))
        lines.append("contracts")
        lines += contracts_table(contracts, with_peer=True)
        for key, standing in sorted(market.get("peers", {}).items()):
            for dest, nd in sorted(standing.get("no_deal", {}).items()):
                lines.append(f"no deal   {key[:12]} {dest}: {nd['reason']} (retry in {nd['retry_in_s']} s)")
    drops = {k: v for k, v in {**stats, **st.get("session_stats", {})}.items()
             if v and (k.startswith("drop") or k in SESSION_DROPS)}
    if drops:
        lines.append("dropped   " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    if stats.get("thread_restarts"):
        # daemon/supervise.py: a data-path thread failed and was restarted
        per = ", ".join(f"{k[len('thread_restarts_'):]} {v}" for k, v in sorted(stats.items())
                        if k.startswith("thread_restarts_"))
        lines.append(f"restarts  data-path threads restarted {stats['thread_restarts']} times ({per}); "
                     "the log has the tracebacks: please report them")
    return "\n".join(lines)


def _grace_cell(standing: dict) -> str:
    """A peer's grace: "no" (lost it by not paying), or "yes" with the KB of it used."""
    if not standing.get("grace", True):
        return "no"
    used = standing.get("grace_used_kb", 0)
    return f"yes, {used} KB used" if used else "yes"


def advert_line(a: dict, now: float) -> str:
    """The gateway's advert in one line: where it is announced, seq, expiry, size, form."""
    if "seq" not in a:
        return "advert    none signed yet"
    where = (f"announced on {', '.join(a['interfaces'])}" if a.get("announcing") else
             "not announced ([advertise] mdns = false)")
    form = (f"reduced to {a['announced_size']} bytes (the whole one over the control channel)"
            if a.get("reduced") else "whole")
    left = f", {a['priced_left_out']} priced prefixes left out" if a.get("priced_left_out") else ""
    err = f"; {a['error']}" if a.get("error") else ""
    return (f"advert    seq {a['seq']}, {a['size']} bytes, expires in {_duration(int(a['expires'] - now))}, "
            f"{where}, {form}{left}; {a.get('requests_answered', 0)} fetched{err}")


def advert_text(a: dict) -> str:
    """`tunnelgate advert`: the decoded advert (daemon/advertise.describe), laid out."""
    if not a:
        return "no advert signed yet"
    ann = a["announced"]
    lines = [f"label     {a['label']}  seq {a['seq']}, expires in {_duration(int(a['expires'] - time.time()))}",
             f"keys      noise {a['noise_key']}  sign {a['sign_key']}",
             f"endpoints {', '.join(a['endpoints']) or '-'}",
             f"price     {a['price_text']} (default)"]
    lines += [f"          {p['price_text']} to {p['prefix']}" for p in a["prices"]]
    lines += [f"contract  {a['contract_kb']} KB for up to {_duration(a['contract_s'])}, "
              f"grace {a['grace_kb']} KB / {_duration(a['grace_s'])}",
              f"pay with  {', '.join(a['methods'])}",
              f"size      {a['size']} bytes; " + (
                  (f"announced on {', '.join(ann['interfaces'])} as {ann['size']} bytes"
                   + (", reduced (no priced prefixes)" if ann["reduced"] else ""))
                  if ann["mdns"] else "not announced ([advertise] mdns = false)")]
    return "\n".join(lines)


def event_line(ev: dict) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(ev["ts"]))
    parts = [when, f"{ev['kind']:<18}"]
    if ev.get("side") == "upstream":        # a relay's buying side (`events` on a relay)
        parts.insert(1, "upstream")
    if ev.get("contract_id"):
        parts.append(ev["contract_id"])
    if ev.get("destination"):
        parts.append(ev["destination"])
    if ev.get("amount_msat"):
        parts.append(format_msat(ev["amount_msat"]))
    line = " ".join(parts)
    return f"{line}: {ev['reason']}" if ev.get("reason") else line


def gateways_text(gws: list[dict]) -> str:
    """`tunnelgate gateways`: one line per gateway, its record and destinations under it."""
    if not gws:
        return "no gateway known yet"
    out = []
    for g in gws:
        rtt = f"{g['rtt_ms']:.1f} ms" if g.get("rtt_ms") is not None else "-"
        price = g.get("price_per_kb")
        out.append(f"{g.get('label') or '-':12} {g['state']:10} {g['endpoint']:24} {g['source']:6} rtt {rtt:9} "
                   f"loss {g['loss']:.0%}  price {price if price is not None else '-'}  "
                   f"spent {g['spent_msat']} msat  key {g['public_key']}")
        rec = g["record"]
        out.append("    record: " + ", ".join(f"{k} {v}" for k, v in rec.items())
                   + (f"  -- last: {g['verdict']}" if g.get("verdict") else ""))
        if g["destinations"]:
            out.append("    carries: " + " ".join(g["destinations"]))
    return "\n".join(out)
