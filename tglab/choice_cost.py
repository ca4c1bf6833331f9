"""The cost of choice: single-stream TCP through a client that chooses among three
gateways, against a client of one, in the same run (issue 18; target >= 0.95x).

    scripts/bench --choice [--runs N] [--time S] [--json FILE]

Three paths, each in a market lab of its own (topology.market), all up at once, their
iperf3 runs taken in turns (bench.turns: the order reversed every round):

  one       one gateway in [[gateways]], no discovery: the client's one-gateway path
            (the bare Initiator receives, no probes, no choice)
  one-mkt   the same gateway with [discovery] mdns = true: the market's path with one
            gateway (daemon/initiators.py receives, probes, choice), nobody else found
  three     three gateways (prices 0.5, 0.6, 0.8); the upstream host is a destination
            bought from the cheapest, routed per destination (a host route to its link)

Columns: TCP 1 up (iperf3 client in the client namespace to the upstream host) and
TCP 1 down (-R: the upstream host sends, the client's receiver opens every datagram),
with the client process's CPU seconds per Gbit. Ratios of one-mkt and three to one:
the median of the rounds' ratios and their range (bench_report.ratio_stats). Then
the receivers alone, in process (tglab/receiver_cost.py): the multi-gateway receiver
against the bare Initiator on the same datagrams. A benchmark: nothing asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

from . import receiver_cost, wggo
from .bench import iperf, turns
from .bench_report import ratio_stats, verdict
from .lab import Lab, exit_on_sigterm
from .market_env import MarketEnv, wait_for
from .topology import market, market_gateway

POLICY = '[policy]\nmax_price = "2"\n'
PATHS = {   # key -> (gateways in the lab and their prices, client TOML beyond POLICY)
    "one": ({1: "0.5"}, ""),
    "one-mkt": ({1: "0.5"}, '[discovery]\nmdns = true\ninterfaces = ["veth0"]\n'),
    "three": ({1: "0.5", 2: "0.6", 3: "0.8"}, ""),
}
COLUMNS = {"up": False, "down": True}
TARGET = 0.95
DST = market_gateway(1)["upstream"]


def log(msg: str) -> None:
    print(f"[choice {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def path_up(key: str):
    prices, extra = PATHS[key]
    lab = Lab("tgC" + secrets.token_hex(3), market(len(prices)))
    env = None
    try:
        lab.build()
        lab.popen(lab.up, "iperf3", "-s", "-p", "5201", stdin=-3, stdout=-3, stderr=-3)
        env = MarketEnv(lab, prices, client_extra=POLICY + extra)
        for i in prices:
            env.serve(i)
        env.up()
        if not wait_for(lambda: len([g for g in env.gateways() if g["state"] == "up"]) == len(prices), 20):
            raise RuntimeError(f"{key}: gateways not all up: {env.gateways()}")
        lab.run(lab.client, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", DST, check=False, timeout=20)
        if len(prices) > 1 and wait_for(lambda: env.carrier(f"{DST}/32"), 10) is None:
            raise RuntimeError(f"{key}: no gateway carries {DST}/32: {env.gateways()}")
        yield lab, env
    finally:
        if env is not None:
            env.close()
        lab.destroy()


def measure(runs: int, seconds: float) -> dict[str, dict]:
    out = {k: {col: [] for col in COLUMNS} | {f"cpu_{col}": [] for col in COLUMNS} for k in PATHS}
    with contextlib.ExitStack() as stack:
        up = {k: stack.enter_context(path_up(k)) for k in PATHS}
        log(f"{len(up)} paths up: {', '.join(up)}; {runs} rounds of iperf3 -t {seconds:g}, up and down")
        for i, order in turns(up, runs):
            for col, reverse in COLUMNS.items():
                for key in order:
                    lab, env = up[key]
                    pid = env.pid("client")
                    cpu0 = wggo.cpu_seconds(pid)
                    r = iperf(lab, seconds, 1, dst=DST, reverse=reverse)
                    out[key][col].append(r["bps"])
                    out[key][f"cpu_{col}"].append((wggo.cpu_seconds(pid) - cpu0) / (r["bytes"] * 8 / 1e9))
            log(f"round {i + 1}/{runs}: " + ", ".join(
                f"{k} {out[k]['up'][-1] / 1e6:.0f}/{out[k]['down'][-1] / 1e6:.0f}" for k in order)
                + " Mbit/s up/down")
        if "three" in up:
            out["three"]["carried_by"] = up["three"][1].carrier(f"{DST}/32")
    return out


def ratios(res: dict[str, dict]) -> dict[str, dict]:
    return {f"{k}/one": {col: ratio_stats(res[k][col], res["one"][col]) for col in COLUMNS}
            | {f"cpu_{col}": ratio_stats(res[k][f"cpu_{col}"], res["one"][f"cpu_{col}"]) for col in COLUMNS}
            for k in res if k != "one"}


def report(res: dict[str, dict], rs: dict[str, dict], runs: int, seconds: float) -> str:
    import statistics as st
    lines = [f"{'path':8} {'TCP 1 up Mbit/s':>16} {'TCP 1 down':>11} {'client CPU s/Gbit up':>21} {'down':>6}"]
    for k, x in res.items():
        lines.append(f"{k:8} {st.median(x['up']) / 1e6:16.0f} {st.median(x['down']) / 1e6:11.0f} "
                     f"{st.median(x['cpu_up']):21.2f} {st.median(x['cpu_down']):6.2f}")
    lines.append(f"(median of {runs} rounds of iperf3 -t {seconds:g}, the paths in turns; "
                 f"one: one gateway, one-mkt: one gateway through the market's path, three: three gateways)")
    for name, r in rs.items():
        parts = []
        for col in ("up", "down", "cpu_up", "cpu_down"):
            s = r[col]
            parts.append(f"{col} -" if s is None else f"{col} x{s['x']:.2f} [{s['lo']:.2f}-{s['hi']:.2f}]"
                         + (" TOO WIDE" if s["verdict"] == "too wide" else ""))
        lines.append(f"{name:10} " + ", ".join(parts))
    three = rs.get("three/one", {})
    for col in COLUMNS:
        s = three.get(col)
        if s is not None:
            v = verdict(s["x"], s["lo"], s["hi"], len(s["rounds"]))
            said = "meets" if s["x"] >= TARGET else "MISSES"
            if v in ("too wide", "one round"):
                said = f"the median {said.lower()}, NOT CONCLUSIVE ({v})"
            lines.append(f"target: three/one TCP 1 {col} >= {TARGET}x: {said} (x{s['x']:.2f})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    exit_on_sigterm()
    ap = argparse.ArgumentParser(prog="scripts/bench --choice", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--time", type=float, default=5.0, help="iperf3 -t seconds (default 5)")
    ap.add_argument("--json", type=Path, help="write all numbers to this file")
    a = ap.parse_args([x for x in argv if x != "--choice"])
    if os.geteuid() != 0:
        print("bench --choice: run as root (it builds network namespaces)", file=sys.stderr)
        return 1
    for tool in ("iperf3", "ping", "nft", "ip"):
        if not shutil.which(tool):
            print(f"bench --choice: {tool} missing; run scripts/setup", file=sys.stderr)
            return 1
    res = measure(a.runs, a.time)
    rs = ratios(res)
    print(report(res, rs, a.runs, a.time))
    recv = receiver_cost.measure(4000, 3)
    print(receiver_cost.report(recv))
    if a.json:
        a.json.write_text(json.dumps({"runs": a.runs, "seconds": a.time, "results": res, "ratios": rs,
                                      "receiver": recv},
                                     indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
