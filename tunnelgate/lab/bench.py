"""Data-path benchmark: tunnelgate against wireguard-go, same machine, same lab.

    scripts/bench [--quick] [--runs N] [--time S] [--json FILE] [--only ROW,...] [--ipv6]
    scripts/bench --peers N [--contracts M] ...   (scale: tunnelgate/lab/scale.py)

Rows (each in a freshly built lab `tgB<hex>-{client,gw,up}`, removed after):

  raw     no tunnel: the client routes 198.18.2.0/24 via the gateway's link
          address, the gateway forwards and masquerades (nft table of ours)
  wg-deb  Debian's wireguard-go (/usr/bin/wireguard-go)
  wg-sid  the current wireguard-go from Debian sid (fetched into .cache/)
  tg      tunnelgate serve + up through the CLI, routes = ["198.18.2.0/24"]

Every row measures the same path: iperf3 client in the client namespace to
the iperf3 server on the upstream host 198.18.2.2:5201, i.e. client → (tunnel)
→ gateway → forwarded + masqueraded → upstream. With --ipv6 every row goes
to the upstream's 2001:2:0:2::2 instead (the tunnels dual-stack, raw routed
over the link's IPv6). Columns:

  TCP 1     single stream, median of N runs of `iperf3 -t S` (receiver's rate)
  TCP 4     `-P 4`, median of N runs
  TCP 1 down  single stream the other way (`iperf3 -R`: the upstream host sends,
            the client receives), median of N runs
  ping      idle RTT to 198.18.2.2, every path up at once in its own lab after
            the rows: rounds of 20 pings at 0.05 s taken by each path in turn
            (the order reversed every round), the mean of its rounds. Rows
            measured minutes apart differed by up to ±0.1 ms from the VM's
            drift alone, the size of the idle-ping target; taken in turn,
            every path sees the same drift.
  ping/load avg of 20 pings at 0.05 s while a single-stream transfer runs
  CPU       utime+stime of each tunnel process (client end, gateway end)
            during the single-stream runs, in CPU seconds per Gbit received;
            "CPU down" the same during the download runs

A benchmark, not a test: nothing is asserted about speed. Absolute numbers
drift between runs and machines; ratios from one run are what count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import wggo, wggo_fetch

UPSTREAM = "198.18.2.2"
GW_LINK = "198.18.1.1"
UPSTREAM_NET = "198.18.2.0/24"
TG = [sys.executable, "-m", "tunnelgate.cli"]
TG_PORT = 51900
PATH_NOTE = ("all rows: iperf3 client in the client ns -> iperf3 -s on the upstream host 198.18.2.2:5201, "
             "through the tunnel (raw: plain routing) and the gateway's forwarding + masquerade")


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- measuring

def parse_iperf(out: str) -> dict:
    """bits_per_second and bytes as the receiver saw them, from `iperf3 -J`."""
    d = json.loads(out)
    if "error" in d:
        raise RuntimeError(f"iperf3: {d['error']}")
    s = d["end"]["sum_received"]
    return {"bps": float(s["bits_per_second"]), "bytes": int(s["bytes"]), "seconds": float(s["seconds"]),
            "retransmits": d["end"].get("sum_sent", {}).get("retransmits")}


def iperf(lab, seconds: float, streams: int = 1, dst: str = UPSTREAM, reverse: bool = False) -> dict:
    """reverse: the upstream host sends (iperf3 -R), a download through the tunnel."""
    cmd = ["iperf3", "-c", dst, "-t", str(seconds), "-P", str(streams), "-J", "--connect-timeout", "3000"]
    if reverse:
        cmd.append("-R")
    last = ""
    for attempt in range(3):  # the server may still be busy with the previous test for a moment
        r = lab.run(lab.client, *cmd, check=False, timeout=seconds + 30)
        try:
            return parse_iperf(r.stdout)
        except (ValueError, KeyError, RuntimeError) as e:
            last = f"{e}; {r.stderr.strip()[-200:]}"
            if "busy" not in r.stdout + r.stderr:
                break
            time.sleep(0.5)
    raise RuntimeError(f"iperf3 -P {streams} to {dst} failed: {last}")


IDLE_ROUNDS, IDLE_PINGS = 10, 20     # idle ping: rounds x pings per path (idle_pings)
PING_RE = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


def ping(lab, count: int = 20, interval: float = 0.05, dst: str = UPSTREAM) -> dict:
    r = lab.run(lab.client, "ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "1", dst,
                check=False, timeout=count * interval + 15)
    m = PING_RE.search(r.stdout)
    loss = re.search(r"([\d.]+)% packet loss", r.stdout)
    if not m:
        raise RuntimeError(f"ping {dst}: no replies ({(r.stdout + r.stderr).strip()[-200:]})")
    return {"avg_ms": float(m.group(2)), "min_ms": float(m.group(1)), "max_ms": float(m.group(3)),
            "loss_pct": float(loss.group(1)) if loss else None}


def ping_under_load(lab, seconds: float, dst: str = UPSTREAM) -> dict:
    cmd = ["iperf3", "-c", dst, "-t", str(seconds), "-J", "--connect-timeout", "3000"]
    p = lab.popen(lab.client, *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(min(1.0, seconds / 4))
        res = ping(lab, dst=dst)
        out, _ = p.communicate(timeout=seconds + 30)
        res["bulk_bps"] = parse_iperf(out)["bps"]
        return res
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=5)


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for side, pid in pids.items():
        try:
            out[side] = wggo.cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            out[side] = float("nan")
    return out


@dataclass(frozen=True)
class Family:
    """What every row measures: the upstream host over IPv4 or (--ipv6) IPv6."""
    v: int
    dst: str            # the upstream host
    net: str            # its prefix, routed into each tunnel
    link_net: str       # the client-gw link (the raw row masquerades it)
    gw_link: str        # the raw row's next hop


IPV4 = Family(4, UPSTREAM, UPSTREAM_NET, "198.18.1.0/24", GW_LINK)
IPV6 = Family(6, "2001:2:0:2::2", "2001:2:0:2::/64", "2001:2:0:1::/64", "2001:2:0:1::1")


def measure(lab, pids: dict[str, int], runs: int, seconds: float, fam: Family = IPV4) -> dict:
    """All columns for one path that is up; pids: tunnel processes ({} for raw)."""
    res: dict = {"single": [], "multi": [], "down": []}
    dst = fam.dst
    # the path's very first packet to the upstream host: for tunnelgate it is held while
    # the contract is proposed and accepted, then released
    res["first_ms"] = ping(lab, count=1, dst=dst)["avg_ms"]
    cpu = {side: 0.0 for side in pids}
    bits = 0
    for _ in range(runs):
        before = cpu_of(pids)
        r = iperf(lab, seconds, 1, dst=dst)
        after = cpu_of(pids)
        for side in pids:
            cpu[side] += after[side] - before[side]
        bits += r["bytes"] * 8
        res["single"].append(r["bps"])
    for _ in range(runs):
        res["multi"].append(iperf(lab, seconds, 4, dst=dst)["bps"])
    cpu_down = {side: 0.0 for side in pids}
    bits_down = 0
    for _ in range(runs):
        before = cpu_of(pids)
        r = iperf(lab, seconds, 1, dst=dst, reverse=True)
        after = cpu_of(pids)
        for side in pids:
            cpu_down[side] += after[side] - before[side]
        bits_down += r["bytes"] * 8
        res["down"].append(r["bps"])
    res["ping_load"] = ping_under_load(lab, seconds, dst=dst)
    res["single_mbps"] = statistics.median(res["single"]) / 1e6
    res["multi_mbps"] = statistics.median(res["multi"]) / 1e6
    res["down_mbps"] = statistics.median(res["down"]) / 1e6
    res["cpu_s_per_gbit_down"] = {side: (c / (bits_down / 1e9) if bits_down else None)
                                  for side, c in cpu_down.items()}
    res["cpu_s"] = cpu
    res["cpu_s_per_gbit"] = {side: (c / (bits / 1e9) if bits else None) for side, c in cpu.items()}
    res["single_bits"] = bits
    return res


# ---------------------------------------------------------------- paths

@dataclass
class Row:
    key: str
    name: str
    version: str = ""
    result: dict | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)


def new_lab():
    """A freshly built lab tgB<hex>; one retry with a new prefix if building fails."""
    from tunnelgate.lab import Lab
    for attempt in (1, 2):
        lab = Lab("tgB" + os.urandom(3).hex())
        try:
            return lab.build() or lab
        except Exception as e:
            lab.destroy()
            if attempt == 2:
                raise
            log(f"building the lab failed ({str(e).splitlines()[0][:120]}); retrying once")
    raise AssertionError("unreachable")


# Each path as a context manager: up in a built lab, yielding its tunnel
# processes ({} for raw); measure() and idle_pings() take it from there.

@contextlib.contextmanager
def raw_up(lab, work, fam: Family = IPV4):
    lab.run(lab.client, "ip", "route", "replace", fam.net, "via", fam.gw_link)
    table = "tgbench_raw"
    wggo.setup_forwarding(lab, table, [fam.link_net])
    try:
        yield {}
    finally:
        wggo.remove_forwarding(lab, table)


def wg_up(binary):
    @contextlib.contextmanager
    def up(lab, work, fam: Family = IPV4):
        with wggo.WgTunnel(lab, binary, log_dir=work / "wg", routes=(fam.net,), ipv6=fam.v == 6) as t:
            yield dict(t.pids)
    return up


def run_path(lab, up, runs, seconds, work, fam: Family = IPV4) -> dict:
    """A row's columns: its path up, measure(), down."""
    with up(lab, work, fam) as pids:
        return measure(lab, pids, runs, seconds, fam)


# Contract size in the tunnelgate row: the daemon's default. Each contract is a
# Request/Propose/Accept round trip and a payment; at 2 Gbit/s the first 10 MB
# last 40 ms, then the client asks for bigger ones (≈ 1 s of traffic, at most
# 2x per step, up to the gateway's max_contract_kb), so the row shows what an
# operator gets without tuning. --contract-kb sets the gateway's contract_kb.
CONTRACT_KB = 10_000


def _tg_configs(work: Path, contract_kb: int = CONTRACT_KB, fam: Family = IPV4) -> tuple[Path, Path]:
    from .configs import TUNNEL6, write_pair
    pair = write_pair(work, f"[pricing]\ncontract_kb = {contract_kb}\n", routes=(fam.net,),
                      tun="tgbs0", client_tun="tgb0", port=TG_PORT,
                      tunnel_address6=TUNNEL6 if fam.v == 6 else None)
    return pair.gateway, pair.client


def _tg(lab, ns, *args, timeout=60):
    r = lab.run(ns, *TG, *args, check=False, timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"tunnelgate {args[0]} failed (exit {r.returncode}): "
                           f"{(r.stderr or r.stdout).strip()[-300:]}")
    return r


def _tail(p: Path, n: int = 15) -> str:
    try:
        return "\n".join(p.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def tg_up(contract_kb: int = CONTRACT_KB):
    @contextlib.contextmanager
    def up(lab, work, fam: Family = IPV4):
        gw_conf, cl_conf = _tg_configs(work, contract_kb, fam)
        pids: dict[str, int] = {}
        try:
            _tg(lab, lab.gw, "serve", "-c", str(gw_conf))
            pids["gw"] = int((work / "gw" / "tunnelgate.pid").read_text())
            _tg(lab, lab.client, "up", "-c", str(cl_conf))
            pids["client"] = int((work / "cl" / "tunnelgate.pid").read_text())
            yield {"client": pids["client"], "gw": pids["gw"]}
        except Exception as e:
            logs = "\n".join(f"--- {w} log ---\n{_tail(work / w / 'tunnelgate.log')}" for w in ("gw", "cl"))
            raise RuntimeError(f"{e}\n{logs}") from None
        finally:
            for ns, conf, side in ((lab.client, cl_conf, "client"), (lab.gw, gw_conf, "gw")):
                tg_down(lab, ns, conf, pids.get(side))
    return up


def tg_down(lab, ns: str, conf: Path, pid: int | None) -> None:
    """`tunnelgate down` for the daemon of `conf` in `ns`; SIGKILL for its
    process `pid` if it is still there 5 s later."""
    lab.run(ns, *TG, "down", "-c", str(conf), check=False, timeout=30)
    if pid:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_tg(lab, runs, seconds, work, fam: Family = IPV4, contract_kb: int = CONTRACT_KB) -> dict:
    with tg_up(contract_kb)(lab, work, fam) as pids:
        res = measure(lab, pids, runs, seconds, fam)
        gw_conf, cl_conf = work / "gateway.toml", work / "client.toml"     # _tg_configs wrote them
        gw = json.loads(_tg(lab, lab.gw, "status", "--json", "-c", str(gw_conf)).stdout)
        bought = json.loads(_tg(lab, lab.client, "contracts", "--all", "--json", "-c", str(cl_conf)).stdout)
        res["contracts"] = {"contract_kb": contract_kb, "bought": len(bought),
                            "dropped_waiting_for_contract": gw["stats"].get("drop_no_contract", 0)}
        return res


def idle_pings(ups: dict, fam: Family = IPV4, rounds: int = IDLE_ROUNDS, count: int = IDLE_PINGS,
               pinger=None) -> dict[str, dict]:
    """Idle ping of every path at once: each `ups[key]` (a context manager as
    raw_up) up in its own lab, then `rounds` rounds in which each path takes
    `count` pings in turn, the order reversed every round, so that the VM's
    drift falls on all of them alike -> key -> {"avg_ms": mean of its round
    averages, "rounds": [...]}."""
    pinger = pinger or ping
    with contextlib.ExitStack() as stack:
        labs = {}
        for key, up in ups.items():
            lab = stack.enter_context(_lab_for_pings())
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tgbench-ping-")))
            stack.enter_context(up(lab, work, fam))
            pinger(lab, count=3, dst=fam.dst)      # handshake, contract: not idle figures
            labs[key] = lab
        got: dict[str, list[float]] = {key: [] for key in labs}
        order = list(labs)
        for _ in range(rounds):
            for key in order:
                got[key].append(pinger(labs[key], count=count, dst=fam.dst)["avg_ms"])
            order.reverse()
    return {key: {"avg_ms": statistics.mean(v), "rounds": v, "count": count} for key, v in got.items()}


@contextlib.contextmanager
def _lab_for_pings():
    lab = new_lab()
    try:
        yield lab
    finally:
        lab.destroy()


def tg_version() -> str:
    from tunnelgate import __version__ as v  # noqa: F401
    try:
        rev = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[2]), "describe", "--always",
                              "--dirty"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        rev = ""
    return f"tunnelgate {v}" + (f" ({rev})" if rev else "")


# ---------------------------------------------------------------- output

def _fmt(x, spec=".0f", none="-"):
    return none if x is None or x != x else format(x, spec)


def table(rows: list[Row], runs: int, seconds: float) -> str:
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
                      _fmt(x.get("ping_idle", {}).get("avg_ms"), ".3f"), f"{x['ping_load']['avg_ms']:.3f}",
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
    out.append(f"(median of {runs} x iperf3 -t {seconds:g}; TCP 1 shows min-max in brackets; TCP 1 down: "
               f"iperf3 -R, the upstream host sending; "
               f"ping: idle, all paths up at once, mean of {IDLE_ROUNDS} rounds of {IDLE_PINGS} at 0.05 s "
               f"taken in turn; under load: 20 at 0.05 s; "
               f"1st pkt: RTT of the path's first packet (tunnelgate: held "
               f"while the contract is negotiated); CPU: per tunnel end during the single-stream runs, "
               f"uploads, then downloads)")
    return "\n".join(out)


def _cpu_text(cpu: dict | None) -> str:
    return "-" if not cpu else f"{_fmt(cpu.get('client'), '.2f')}+{_fmt(cpu.get('gw'), '.2f')}"


def _cpu_sum(per_gbit: dict | None) -> float:
    return sum(v for v in (per_gbit or {}).values() if v is not None)


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
        out.append({"vs": key, "name": ref.name,
                    "single_x": a["single_mbps"] / b["single_mbps"],
                    "multi_x": a["multi_mbps"] / b["multi_mbps"],
                    "down_x": (a["down_mbps"] / b["down_mbps"]) if a.get("down_mbps") and b.get("down_mbps")
                    else None,
                    "cpu_per_gbit_down_x": (down_a / down_b) if down_b and key != "raw" else None,
                    "ping_idle_diff_ms": (a["ping_idle"]["avg_ms"] - b["ping_idle"]["avg_ms"])
                    if "ping_idle" in a and "ping_idle" in b else None,
                    "ping_idle_round_diffs_ms": _round_diffs(a.get("ping_idle"), b.get("ping_idle")),
                    "ping_load_diff_ms": a["ping_load"]["avg_ms"] - b["ping_load"]["avg_ms"],
                    "cpu_per_gbit_x": (cpu_a / cpu_b) if cpu_b and key != "raw" else None,
                    "first_diff_ms": (a["first_ms"] - b["first_ms"]) if "first_ms" in a and "first_ms" in b
                    else None})
    return out


def _round_diffs(a: dict | None, b: dict | None) -> list[float] | None:
    """Round by round differences of two paths' idle pings (idle_pings takes
    each round's pings of all paths within seconds of each other, so a round's
    difference is free of the VM's drift between rounds; their spread shows how
    far the mean difference can be trusted)."""
    if not a or not b or not a.get("rounds") or len(a["rounds"]) != len(b.get("rounds") or ()):
        return None
    return [x - y for x, y in zip(a["rounds"], b["rounds"])]


def ratio_text(rs: list[dict]) -> str:
    if not rs:
        return "tunnelgate: no ratios (the tunnelgate row or all reference rows failed)"
    out = ["tunnelgate compared with:"]
    for r in rs:
        cpu = f", CPU/Gbit x{r['cpu_per_gbit_x']:.2f}" if r["cpu_per_gbit_x"] else ""
        if r.get("cpu_per_gbit_down_x"):
            cpu += f" (downloads x{r['cpu_per_gbit_down_x']:.2f})"
        if r.get("first_diff_ms") is not None:
            cpu += f", first packet {r['first_diff_ms']:+.3f} ms"
        down = f", TCP 1 down x{r['down_x']:.2f}" if r.get("down_x") else ""
        idle = "-" if r.get("ping_idle_diff_ms") is None else f"{r['ping_idle_diff_ms']:+.3f}"
        idle += " ms idle"
        if r.get("ping_idle_round_diffs_ms"):
            d = r["ping_idle_round_diffs_ms"]
            idle += f" (rounds {min(d):+.3f} to {max(d):+.3f})"
        out.append(f"  {r['name']:<36} TCP 1 x{r['single_x']:.2f}, TCP 4 x{r['multi_x']:.2f}{down}, "
                   f"ping {idle}, {r['ping_load_diff_ms']:+.3f} ms under load{cpu}")
    return "\n".join(out)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    from tunnelgate.lab import exit_on_sigterm
    exit_on_sigterm()
    if any(a == "--peers" or a.startswith("--peers=") for a in (sys.argv[1:] if argv is None else argv)):
        from . import scale   # one gateway, many peers and contracts: see tunnelgate/lab/scale.py
        return scale.main(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="scripts/bench", description="tunnelgate vs wireguard-go, same lab")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 run of iperf3 -t 2 per column")
    ap.add_argument("--runs", type=int, default=None, help="iperf3 runs per column (default 3)")
    ap.add_argument("--time", type=float, default=None, help="iperf3 -t seconds (default 5)")
    ap.add_argument("--json", type=Path, help="write all numbers to this file")
    ap.add_argument("--only", default="raw,wg-deb,wg-sid,tg", help="rows, comma-separated (raw,wg-deb,wg-sid,tg)")
    ap.add_argument("--contract-kb", type=int, default=CONTRACT_KB,
                    help=f"tunnelgate row: the gateway's contract_kb (default {CONTRACT_KB}, the daemon's)")
    ap.add_argument("--no-fetch", action="store_true", help="do not download the sid wireguard-go")
    ap.add_argument("--ipv6", action="store_true",
                    help="every row over IPv6 (the upstream's 2001:2:0:2::2; dual-stack tunnels)")
    a = ap.parse_args(argv)
    runs = a.runs or (1 if a.quick else 3)
    seconds = a.time or (2 if a.quick else 5)
    if os.geteuid() != 0:
        print("bench: run as root (it builds network namespaces)", file=sys.stderr)
        return 1
    for tool in ("iperf3", "ping", "nft", "ip"):
        if not shutil.which(tool):
            print(f"bench: {tool} missing; run scripts/setup", file=sys.stderr)
            return 1
    wanted = [k.strip() for k in a.only.split(",") if k.strip()]

    rows: list[Row] = []
    ups = {}                    # row key -> its path up (raw_up, wg_up, tg_up); none: skipped
    if "raw" in wanted:
        rows.append(Row("raw", "raw veth, routed via gw (no tunnel)", version=f"kernel {platform.release()}"))
        ups["raw"] = raw_up
    if "wg-deb" in wanted:
        rows.append(Row("wg-deb", "wireguard-go (Debian 12)"))
        if Path(wggo.DEBIAN_BINARY).exists():
            rows[-1].version = wggo_fetch.version_of(wggo.DEBIAN_BINARY)
            ups["wg-deb"] = wg_up(wggo.DEBIAN_BINARY)
        else:
            rows[-1].error = f"{wggo.DEBIAN_BINARY} not installed (apt package wireguard-go; scripts/setup)"
    if "wg-sid" in wanted:
        rows.append(Row("wg-sid", "wireguard-go (Debian sid)"))
        try:
            if a.no_fetch:
                b = wggo_fetch.binary_path()
                if not b.exists():
                    raise wggo_fetch.FetchError("not in the cache and --no-fetch given")
            else:
                b = wggo_fetch.fetch()
            rows[-1].version = wggo_fetch.version_of(b)
            ver = Path(wggo_fetch.DEFAULT_CACHE / "version.txt")
            if ver.exists():
                rows[-1].version += f" (package {ver.read_text().strip()})"
            ups["wg-sid"] = wg_up(b)
        except wggo_fetch.FetchError as e:
            rows[-1].error = f"could not fetch the sid wireguard-go: {e}"
    if "tg" in wanted:
        rows.append(Row("tg", "tunnelgate", version=tg_version() + f", {a.contract_kb} KB contracts"))
        ups["tg"] = tg_up(a.contract_kb)

    print(f"versions: {platform.node()} kernel {platform.release()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, "
          f"{subprocess.run(['iperf3', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}")
    for r in rows:
        if r.version:
            print(f"  {r.name}: {r.version}")
    fam = IPV6 if a.ipv6 else IPV4
    print(f"path: {PATH_NOTE}" + (f"; over IPv6: {fam.dst}, tunnels dual-stack" if a.ipv6 else ""), flush=True)

    started = time.monotonic()
    for row in rows:
        up = ups.get(row.key)
        if up is None:
            log(f"{row.name}: skipped ({row.error})")
            continue
        log(f"{row.name}: building the lab, {runs} x {seconds:g} s per column")
        work = Path(tempfile.mkdtemp(prefix="tgbench-"))
        lab = None
        try:
            lab = new_lab()
            lab.start_upstream({})
            if row.key == "tg":     # also how many contracts it bought
                row.result = run_tg(lab, runs, seconds, work, fam, a.contract_kb)
            else:
                row.result = run_path(lab, up, runs, seconds, work, fam)
            log(f"{row.name}: {row.result['single_mbps']:.0f} Mbit/s single, "
                f"{row.result['multi_mbps']:.0f} Mbit/s 4 streams")
            if "contracts" in row.result:
                c = row.result["contracts"]
                log(f"{row.name}: {c['bought']} contracts of {c['contract_kb']} KB bought, "
                    f"packets dropped waiting for one: {c['dropped_waiting_for_contract']}")
        except Exception as e:  # a row that fails says why; the others still run
            row.error = f"{type(e).__name__}: {e}"
            log(f"{row.name}: FAILED: {row.error}")
        finally:
            if lab is not None:
                lab.destroy()
            shutil.rmtree(work, ignore_errors=True)

    measured = {r.key: ups[r.key] for r in rows if r.result is not None}
    if measured:
        log(f"idle ping: {len(measured)} paths up at once, {IDLE_ROUNDS} rounds of {IDLE_PINGS} pings "
            f"each, in turn")
        try:
            idle = idle_pings(measured, fam)
        except Exception as e:  # the throughput figures stand without it
            log(f"idle ping: FAILED: {type(e).__name__}: {e}")
            idle = {}
        for r in rows:
            if r.key in idle:
                r.result["ping_idle"] = idle[r.key]

    print()
    print(table(rows, runs, seconds))
    rs = ratios(rows)
    print()
    print(ratio_text(rs))
    for r in rows:
        if r.error and r.result is None:
            print(f"\n{r.name} failed:\n  " + r.error.replace("\n", "\n  "))
    log(f"done in {time.monotonic() - started:.0f} s")
    if a.json:
        a.json.write_text(json.dumps({
            "runs": runs, "seconds": seconds, "path": PATH_NOTE, "ip_version": fam.v,
            "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                        "python": platform.python_version()},
            "rows": [{"key": r.key, "name": r.name, "version": r.version, "error": r.error,
                      "result": r.result} for r in rows],
            "ratios": rs}, indent=2) + "\n")
        print(f"\nnumbers written to {a.json}")
    return 0 if any(r.result for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
