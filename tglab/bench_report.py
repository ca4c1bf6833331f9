"""scripts/bench's report: the table of every path's figures and tunnelgate's
ratios to each reference path, each with its rounds' range and a verdict
on whether the range is narrow enough to conclude from. Pure: numbers in,
text and dicts out (tglab/bench.py measures)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

# The throughput columns, each a list of runs in round order in a result.
COLUMN_NAMES = {"single": "TCP 1", "multi": "TCP 4", "down": "TCP 1 down"}


@dataclass
class Row:
    key: str
    name: str
    version: str = ""
    result: dict | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)


def _fmt(x, spec=".0f", none="-"):
    return none if x is None or x != x else format(x, spec)


def table(rows: list[Row], runs: int, seconds: float, idle_rounds: int = 10, idle_pings: int = 20) -> str:
    head = ["path", "TCP 1 Mbit/s", "TCP 4 Mbit/s", "TCP 1 down", "ping ms", "ping/load ms",
            "1st pkt ms", "CPU s/Gbit cl+gw", "CPU down"]
    lines = []
    for r in rows:
        if r.result is None:
            lines.append([r.name, f"FAILED: {(r.error or '').splitlines()[0].removeprefix('RuntimeError: ')[:110]}"]
                         + [""] * (len(head) - 2))
            continue
        x = r.result
        single = x["single"]
        spread = f" ({min(single) / 1e6:.0f}-{max(single) / 1e6:.0f})" if len(single) > 1 else ""
        lines.append([r.name, f"{x['single_mbps']:.0f}{spread}", f"{x['multi_mbps']:.0f}",
                      _fmt(x.get("down_mbps")),
                      _fmt(x.get("ping_idle", {}).get("avg_ms"), ".3f"),
                      _fmt(x.get("ping_load", {}).get("avg_ms"), ".3f"),
                      _fmt(x.get("first_ms"), ".3f"), _cpu_text(x["cpu_s_per_gbit"]),
                      _cpu_text(x.get("cpu_s_per_gbit_down"))])
    ok = [l for l in lines if not l[1].startswith("FAILED")]
    widths = [max([len(h)] + [len(l[i]) for l in ok]) for i, h in enumerate(head)]
    widths[0] = max([widths[0]] + [len(l[0]) for l in lines])
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for l in lines:
        if l[1].startswith("FAILED"):
            out.append(f"| {l[0].ljust(widths[0])} | {l[1]}")
        else:
            out.append("| " + " | ".join(c.ljust(w) for c, w in zip(l, widths)) + " |")
    rounds = f"{runs} round{'s' if runs != 1 else ''}"
    out.append(f"(all paths up at once, each in its own lab; median of {rounds} of iperf3 -t {seconds:g}, "
               f"each round every column of every path in turn; TCP 1 shows min-max in brackets; TCP 1 down: "
               f"iperf3 -R, the upstream host sending; "
               f"ping: idle, mean of {idle_rounds} rounds of {idle_pings} at 0.05 s "
               f"taken in turn; under load: 20 at 0.05 s; "
               f"1st pkt: RTT of the path's first packet (tunnelgate: held "
               f"while the contract is negotiated); CPU: per tunnel end during the single-stream runs, "
               f"uploads, then downloads)")
    return "\n".join(out)


def _cpu_text(cpu: dict | None) -> str:
    return "-" if not cpu else f"{_fmt(cpu.get('client'), '.2f')}+{_fmt(cpu.get('gw'), '.2f')}"


def _cpu_sum(per_gbit: dict | None) -> float:
    return sum(v for v in (per_gbit or {}).values() if v is not None)


# A ratio is the median of its rounds' ratios (tunnelgate's run over the
# reference's run of the same round). Its rounds must lie within SPREAD of
# that median (e.g. x1.00 with rounds x0.91..x1.09), else it is "too wide" to
# conclude anything from; within that, a range above or below 1.0 says which
# path was ahead in every round, one containing 1.0 that neither was.
SPREAD = 0.10
CONCLUSIVE = ("above", "below", "level")
WIDE_NOTE = {"too wide": f"too wide to conclude: rounds more than ±{SPREAD * 100:g} % from their median",
             "one round": "one round: no range, nothing to conclude from"}


def ratio_stats(a: list[float] | None, b: list[float] | None) -> dict | None:
    """Round by round ratios of two paths' runs (lists in round order) ->
    {"x": median, "lo", "hi", "rounds": [...], "verdict": verdict()}; None
    when no round has both."""
    rs = [x / y for x, y in zip(a or (), b or ()) if x and y]
    if not rs:
        return None
    med, lo, hi = statistics.median(rs), min(rs), max(rs)
    return {"x": med, "lo": lo, "hi": hi, "rounds": rs, "verdict": verdict(med, lo, hi, len(rs))}


def verdict(med: float, lo: float, hi: float, n: int) -> str:
    """"one round" (no range), "too wide" (a round beyond SPREAD of the
    median), else "above" / "below" (every round's ratio above / below 1.0)
    or "level" (the range contains 1.0)."""
    if n < 2:
        return "one round"
    slack = 1e-9 * med        # exactly SPREAD away is within, whatever the float rounding
    if hi > med * (1 + SPREAD) + slack or lo < med * (1 - SPREAD) - slack:
        return "too wide"
    if lo > 1:
        return "above"
    if hi < 1:
        return "below"
    return "level"


def ratios(rows: list[Row]) -> list[dict]:
    by = {r.key: r for r in rows}
    tg = by.get("tg")
    out = []
    if not tg or not tg.result:
        return out
    for key in ("wg-deb", "wg-sid", "raw"):
        ref = by.get(key)
        if not ref or not ref.result:
            continue
        a, b = tg.result, ref.result
        cpu_a, cpu_b = _cpu_sum(a["cpu_s_per_gbit"]), _cpu_sum(b["cpu_s_per_gbit"])
        down_a, down_b = _cpu_sum(a.get("cpu_s_per_gbit_down")), _cpu_sum(b.get("cpu_s_per_gbit_down"))
        r = {"vs": key, "name": ref.name}
        for col in COLUMN_NAMES:
            st = ratio_stats(a.get(col), b.get(col))
            r[f"{col}_x"] = st and st["x"]
            r[f"{col}_range"] = st and [st["lo"], st["hi"]]
            r[f"{col}_round_x"] = st and st["rounds"]
            r[f"{col}_verdict"] = st and st["verdict"]
        r.update({
            "cpu_per_gbit_down_x": (down_a / down_b) if down_b and key != "raw" else None,
            "ping_idle_diff_ms": (a["ping_idle"]["avg_ms"] - b["ping_idle"]["avg_ms"])
            if "ping_idle" in a and "ping_idle" in b else None,
            "ping_idle_round_diffs_ms": _round_diffs(a.get("ping_idle"), b.get("ping_idle")),
            "ping_load_diff_ms": a["ping_load"]["avg_ms"] - b["ping_load"]["avg_ms"]
            if "ping_load" in a and "ping_load" in b else None,
            "cpu_per_gbit_x": (cpu_a / cpu_b) if cpu_b and key != "raw" else None,
            "first_diff_ms": (a["first_ms"] - b["first_ms"]) if "first_ms" in a and "first_ms" in b
            else None})
        out.append(r)
    return out


def inconclusive(rs: list[dict]) -> list[str]:
    """Each ratio of `rs` that cannot be concluded from, with why."""
    out = []
    for r in rs:
        for col, name in COLUMN_NAMES.items():
            v = r.get(f"{col}_verdict")
            if v and v not in CONCLUSIVE:
                lo, hi = r[f"{col}_range"]
                out.append(f"{name} vs {r['name']}: x{r[f'{col}_x']:.2f}, rounds x{lo:.2f} to x{hi:.2f}: "
                           f"{WIDE_NOTE[v]}")
    return out


def _round_diffs(a: dict | None, b: dict | None) -> list[float] | None:
    """Round by round differences of two paths' idle pings (idle_pings takes
    each round's pings of all paths within seconds of each other, so a round's
    difference is free of the VM's drift between rounds; their spread shows how
    far the mean difference can be trusted)."""
    if not a or not b or not a.get("rounds") or len(a["rounds"]) != len(b.get("rounds") or ()):
        return None
    return [x - y for x, y in zip(a["rounds"], b["rounds"])]


def _x_text(r: dict, col: str) -> str:
    """ "x1.07 [1.02-1.12]": the median of the rounds' ratios and their range;
    marked when the range is too wide or crosses 1.0."""
    x, v = r.get(f"{col}_x"), r.get(f"{col}_verdict")
    if x is None:
        return "-"
    if v == "one round":
        return f"x{x:.2f}"
    lo, hi = r[f"{col}_range"]
    mark = {"too wide": " TOO WIDE", "level": " ~1"}.get(v, "")
    return f"x{x:.2f} [{lo:.2f}-{hi:.2f}]{mark}"


def ratio_text(rs: list[dict]) -> str:
    if not rs:
        return "tunnelgate: no ratios (the tunnelgate row or all reference rows failed)"
    out = ["tunnelgate compared with (x: the median of the rounds' ratios, tunnelgate's run over the "
           "reference's in the same round; [lowest-highest round]):"]
    for r in rs:
        cpu = f", CPU/Gbit x{r['cpu_per_gbit_x']:.2f}" if r["cpu_per_gbit_x"] else ""
        if r.get("cpu_per_gbit_down_x"):
            cpu += f" (downloads x{r['cpu_per_gbit_down_x']:.2f})"
        if r.get("first_diff_ms") is not None:
            cpu += f", first packet {r['first_diff_ms']:+.3f} ms"
        down = f", TCP 1 down {_x_text(r, 'down')}" if r.get("down_x") else ""
        idle = "-" if r.get("ping_idle_diff_ms") is None else f"{r['ping_idle_diff_ms']:+.3f}"
        idle += " ms idle"
        if r.get("ping_idle_round_diffs_ms"):
            d = r["ping_idle_round_diffs_ms"]
            idle += f" (rounds {min(d):+.3f} to {max(d):+.3f})"
        load = "-" if r.get("ping_load_diff_ms") is None else f"{r['ping_load_diff_ms']:+.3f}"
        out.append(f"  {r['name']:<36} TCP 1 {_x_text(r, 'single')}, TCP 4 {_x_text(r, 'multi')}{down}, "
                   f"ping {idle}, {load} ms under load{cpu}")
    bad = inconclusive(rs)
    if bad and all(r.get(f"{col}_verdict") in (None, "one round") for r in rs for col in COLUMN_NAMES):
        out.append(f"NOT CONCLUSIVE: {WIDE_NOTE['one round']} (--runs 3 or more for ranges)")
    elif bad:
        out.append("NOT CONCLUSIVE (a ratio needs every round within ±"
                   f"{SPREAD * 100:g} % of its median):")
        out += [f"  {b}" for b in bad]
    else:
        out.append(f"every ratio's rounds within ±{SPREAD * 100:g} % of its median"
                   " (~1: the range contains 1.0, neither path ahead in every round)")
    return "\n".join(out)
