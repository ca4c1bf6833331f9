"""Failover benchmark: the ping gap when the serving gateway is killed (issue 18).

    scripts/bench --failover [--runs N] [--json FILE] [--ipv6]

A market lab (topology.market(3): one client, three gateways priced 0.5, 0.6 and 0.8
on one LAN, each with its own uplink to one upstream host), fresh daemons every round
(tglab/market_env.py). The client pings the upstream host every 50 ms; once the
cheapest gateway carries the pings, it is killed with SIGKILL. Per round:

  gap        the longest time between two consecutive replies (ping -D receive times):
             what a user sees; target <= 1 s
  detection  from the kill to the client's `gateway_state` event declaring that
             gateway down (the client's event log, wall clock of the same host)
  moved      from the kill to the `destination_moved` event of the pinged destination
  contract   from the kill to the first `accepted` and `paid` event of a contract at
             another gateway (`contracts --all` names each contract's gateway)
  lost       pings sent and never answered

Printed: the median and range over the rounds, and, as context only (not measured
here), when the systems people use today notice a dead exit. A benchmark: nothing is
asserted, figures drift with the host's load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import statistics
import sys
import time
from pathlib import Path

from .lab import Lab, exit_on_sigterm
from .market_env import MarketEnv, wait_for
from .topology import market, market_gateway

PRICES = {1: "0.5", 2: "0.6", 3: "0.8"}
POLICY = '[policy]\nmax_price = "2"\n'
INTERVAL = 0.05            # ping interval, s
BEFORE_S = 3.0             # pings before the kill
AFTER_S = 6.0              # pings after it (the ping's count is bounded by both)
TARGET_GAP_S = 1.0
# For scale only, from the issue (not measured here): when each notices a dead exit.
CONTEXT = (
    ("Althea (exit selector)", "25 s"),
    ("TollGate (connectivity check)", "~60 s"),
    ("Headscale (router failover)", "70-75 s"),
    ("Tailscale (exit node)", "never: keeps the dead exit by design"),
    ("WireGuard (new handshake after silence)", "15 s"),
)
STAMP_RE = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+)", re.M)


def log(msg: str) -> None:
    print(f"[failover {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def reply_times(out: str) -> list[tuple[float, int]]:
    """(receive time, icmp_seq) of each reply in `ping -D` output, in order."""
    return [(float(t), int(s)) for t, s in STAMP_RE.findall(out)]


def longest_gap(replies: list[tuple[float, int]], kill: float) -> float | None:
    """The longest time between consecutive replies around the kill (the last reply
    before it to the first after it, or longer gaps after); None: no reply after it."""
    before = [t for t, _ in replies if t <= kill]
    after = [t for t, _ in replies if t > kill]
    if not after:
        return None
    times = ([before[-1]] if before else [kill]) + after
    return max(b - a for a, b in zip(times, times[1:])) if len(times) > 1 else 0.0


def _first(events: list[dict], kind: str, after: float, pred=lambda e: True) -> float | None:
    ts = [e["ts"] for e in events if e["kind"] == kind and e["ts"] >= after and pred(e)]
    return min(ts) if ts else None


def one_round(lab, i: int, dst: str) -> dict:
    env = MarketEnv(lab, PRICES, client_extra=POLICY, ipv6=":" in dst)
    try:
        for g in PRICES:
            env.serve(g)
        env.up()
        dest = f"{dst}/{128 if ':' in dst else 32}"
        if not wait_for(lambda: len(env.gateways()) == len(PRICES)
                        and all(g["state"] == "up" for g in env.gateways()), 20):
            raise RuntimeError(f"gateways not all up: {env.gateways()}")
        # the first pings buy the destination's contract and settle its choice
        lab.run("client", "ping", "-n", "-c", "5", "-i", "0.2", "-W", "1", dst, check=False, timeout=20)
        serving = wait_for(lambda: env.carrier(dest), 10)
        if serving is None:
            raise RuntimeError(f"no gateway carries {dest}: {env.gateways()}")
        killed = int(serving.removeprefix("gw"))
        key = env.public[killed]
        count = int((BEFORE_S + AFTER_S) / INTERVAL)
        p = lab.popen("client", "ping", "-D", "-n", "-i", str(INTERVAL), "-c", str(count), "-W", "1", dst,
                      stdout=-1, text=True)
        time.sleep(BEFORE_S)
        kill = time.time()
        env.kill9(f"gw{killed}")
        out, _ = p.communicate(timeout=BEFORE_S + AFTER_S + 30)
        time.sleep(0.5)
        events = env.request("client", "events")
        contracts = env.request("client", "contracts", all=True)
        at = {c["contract_id"]: c["gateway"] for c in contracts}
        elsewhere = lambda e: e["contract_id"] in at and at[e["contract_id"]] != key   # noqa: E731
        replies = reply_times(out)
        down = _first(events, "gateway_state", kill,
                      lambda e: e["data"].get("gateway") == key and e["data"].get("state") == "down")
        moved = _first(events, "destination_moved", kill,
                       lambda e: e["destination"] == dest and e["data"].get("previous") == key)
        accepted = _first(events, "accepted", kill, elsewhere)
        paid = _first(events, "paid", kill, elsewhere)
        gap = longest_gap(replies, kill)
        to = env.carrier(dest)
        new_key = env.public.get(int(to.removeprefix("gw"))) if to else None
        # no new contract: the destination's contract there from before the kill (bought while
        # the first choice settled) was still live, and is used again (never bought twice)
        reused = accepted is None and any(c["gateway"] == new_key and c["destination"] == dest
                                          and c["state"] in ("PAID", "GRACE", "ACCEPTED") for c in contracts)
        since = lambda t: None if t is None else t - kill     # noqa: E731
        r = {"round": i, "killed": f"gw{killed}", "to": to, "gap_s": gap,
             "detection_s": since(down), "moved_s": since(moved), "accepted_s": since(accepted),
             "paid_s": since(paid), "reused_contract": reused,
             "sent": count, "replies": len(replies), "lost": count - len(replies)}
        log(f"round {i + 1}: killed {r['killed']}, now {r['to']}: gap {_f(gap)} s, detection "
            f"{_f(r['detection_s'])} s, moved {_f(r['moved_s'])} s, accepted {_f(r['accepted_s'])} s, "
            f"paid {_f(r['paid_s'])} s{' (its earlier contract there reused)' if reused else ''}, "
            f"{r['lost']} of {count} pings lost")
        return r
    except Exception:
        log(env.logs())
        raise
    finally:
        env.close()


def _f(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


FIGURES = (("gap_s", "longest gap without replies"), ("detection_s", "detection (kill -> gateway down)"),
           ("moved_s", "destination moved"), ("accepted_s", "new contract accepted"),
           ("paid_s", "new contract paid"), ("lost", "pings lost"))


def summarize(rounds: list[dict]) -> dict[str, dict]:
    out: dict = {"reused_contract": sum(1 for r in rounds if r.get("reused_contract"))}
    for k, _ in FIGURES:
        xs = [r[k] for r in rounds if r.get(k) is not None]
        out[k] = {"median": statistics.median(xs), "lo": min(xs), "hi": max(xs), "n": len(xs)} if xs else None
    return out


def report(summary: dict[str, dict], runs: int, family: str) -> str:
    lines = [f"failover, {family}: kill -9 of the serving gateway of 3, ping every {INTERVAL * 1000:.0f} ms "
             f"(median [lowest-highest] of {runs} round{'s' if runs != 1 else ''}, seconds after the kill)"]
    for k, name in FIGURES:
        s = summary.get(k)
        spec = ".0f" if k == "lost" else ".2f"
        text = "-" if s is None else f"{s['median']:{spec}} [{s['lo']:{spec}}-{s['hi']:{spec}}]"
        if s is not None and s["n"] < runs:
            text += f" ({runs - s['n']} round(s) without one)"
        lines.append(f"  {name:36} {text}")
    if summary.get("reused_contract"):
        lines.append(f"  no new contract in {summary['reused_contract']} round(s): one bought at the new gateway "
                     "before the kill (while the first choice settled), still live, was used again")
    gap = summary.get("gap_s")
    ok = gap is not None and gap["hi"] <= TARGET_GAP_S
    lines.append(f"target: gap <= {TARGET_GAP_S:g} s in every round: {'meets' if ok else 'MISSES'}")
    lines.append("for scale (from the issue, not measured here): a dead exit is noticed after")
    lines += [f"  {name:40} {t}" for name, t in CONTEXT]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    exit_on_sigterm()
    ap = argparse.ArgumentParser(prog="scripts/bench --failover", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="rounds, each with fresh daemons (default 3)")
    ap.add_argument("--ipv6", action="store_true", help="ping the upstream host's IPv6 address")
    ap.add_argument("--json", type=Path, help="write all numbers to this file")
    a = ap.parse_args([x for x in argv if x != "--failover"])
    if os.geteuid() != 0:
        print("bench --failover: run as root (it builds network namespaces)", file=sys.stderr)
        return 1
    for tool in ("ping", "nft", "ip"):
        if not shutil.which(tool):
            print(f"bench --failover: {tool} missing; run scripts/setup", file=sys.stderr)
            return 1
    up = market_gateway(1)
    dst = up["upstream6"] if a.ipv6 else up["upstream"]
    lab = Lab("tgF" + secrets.token_hex(3), market(len(PRICES)))
    rounds = []
    try:
        lab.build()
        for i in range(a.runs):
            try:
                rounds.append(one_round(lab, i, dst))
            except Exception as e:           # the other rounds stand without it
                log(f"round {i + 1} FAILED: {type(e).__name__}: {e}")
    finally:
        lab.destroy()
    if not rounds:
        return 1
    summary = summarize(rounds)
    print(report(summary, len(rounds), "IPv6" if a.ipv6 else "IPv4"))
    if a.json:
        a.json.write_text(json.dumps({"runs": a.runs, "ipv6": a.ipv6, "rounds": rounds, "summary": summary,
                                      "context": dict(CONTEXT)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
