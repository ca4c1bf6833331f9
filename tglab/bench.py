"""Data-path benchmark: tunnelgate against wireguard-go, same machine, same lab.

    scripts/bench [--quick] [--runs N] [--time S] [--json FILE] [--only ROW,...] [--ipv6]
    scripts/bench --peers N [--contracts M] ...   (scale: tglab/scale.py)
    scripts/bench --flood [--flood-seconds S] ...  (floods of the gateway's port: tglab/flood.py)

Rows (paths), all up at once, each in a freshly built lab `tgB<hex>-{client,gw,up}`
of its own, removed after:

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
  ping      idle RTT to 198.18.2.2 after the throughput rounds: rounds of 20
            pings at 0.05 s taken by each path in turn, the mean of its rounds
  ping/load avg of 20 pings at 0.05 s while a single-stream transfer runs
  CPU       utime+stime of each tunnel process (client end, gateway end)
            during the single-stream runs, in CPU seconds per Gbit received;
            "CPU down" the same during the download runs

In turns: the N runs of a column are N rounds, and in each round every path
takes its run of each column in turn, the order of the paths reversed every
round (as the idle ping's rounds). Rows run one after another differed by
their own drift: three runs on one evening gave tunnelgate's download x0.69,
x0.80 and x1.00 of the same wireguard-go. A round's runs of two paths are
seconds apart, so each ratio is the median of the rounds' ratios
(tunnelgate's run over the reference's run of the same round), printed with
its range; a ratio whose rounds lie more than SPREAD (10 %) from that median
is flagged "too wide to conclude", in the text and in --json (`*_verdict`).

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
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import wggo, wggo_fetch
from .bench_report import COLUMN_NAMES, SPREAD, Row, inconclusive, ratio_text, ratios, table
from .daemons import TG_PORT, tg, tg_down, tg_version
from .topology import GW_LINK, GW_LINK6, UPSTREAM, UPSTREAM6

UPSTREAM_NET = "198.18.2.0/24"
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


# iperf3 -C: the senders' TCP congestion control; None: the namespace's default
CONGESTION: list[str | None] = [None]


def cc_args() -> list[str]:
    return ["-C", CONGESTION[0]] if CONGESTION[0] else []


def default_cc() -> str:
    try:
        return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    except OSError:
        return "?"


def iperf(lab, seconds: float, streams: int = 1, dst: str = UPSTREAM, reverse: bool = False) -> dict:
    """reverse: the upstream host sends (iperf3 -R), a download through the tunnel."""
    cmd = ["iperf3", "-c", dst, "-t", str(seconds), "-P", str(streams), "-J", "--connect-timeout", "3000",
           *cc_args()]
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
    cmd = ["iperf3", "-c", dst, "-t", str(seconds), "-J", "--connect-timeout", "3000", *cc_args()]
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
IPV6 = Family(6, UPSTREAM6, "2001:2:0:2::/64", "2001:2:0:1::/64", GW_LINK6)


# Columns measured in turns: key in the result -> (iperf3 streams, reverse = a download)
COLUMNS = {"single": (1, False), "multi": (4, False), "down": (1, True)}
assert COLUMNS.keys() == COLUMN_NAMES.keys()   # the report reads these lists by the same keys


@dataclass
class PathUp:
    """One path up in a lab of its own, as paths_up() yields it."""
    lab: object
    pids: dict[str, int]          # tunnel processes (client end, gateway end); {} for raw
    work: Path                    # its config files, logs


def turns(keys, rounds: int):
    """The order in which paths take their turns: every round each key once,
    the order reversed every round, so that a drift of the host during a
    round falls on the first and the last path alike."""
    order = list(keys)
    for i in range(rounds):
        yield i, list(order)
        order.reverse()


@contextlib.contextmanager
def paths_up(ups: dict, fam: Family = IPV4, upstream: bool = False, errors: dict | None = None):
    """Every path of `ups` (key -> a context manager as raw_up) up at once,
    each in a lab of its own -> key -> PathUp. upstream: also start the
    upstream's iperf3 server. A path that does not come up is left out with
    its error in `errors` (key -> text) when given, else it raises."""
    with contextlib.ExitStack() as stack:
        got: dict[str, PathUp] = {}
        for key, up in ups.items():
            try:
                topology = getattr(up, "topology", None)        # a row's own lab shape (tg2)
                lab = stack.enter_context(_lab(*([topology] if topology is not None else [])))
                work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tgbench-")))
                if upstream:
                    lab.start_upstream({})
                got[key] = PathUp(lab, stack.enter_context(up(lab, work, fam)), work)
            except Exception as e:
                if errors is None:
                    raise
                errors[key] = f"{type(e).__name__}: {e}"
                log(f"{key}: FAILED to come up: {errors[key]}")
        yield got


@contextlib.contextmanager
def _lab(topology=None):
    lab = new_lab(topology)
    try:
        yield lab
    finally:
        lab.destroy()


def measure_in_turns(paths: dict[str, PathUp], runs: int, seconds: float, fam: Family = IPV4,
                     run_iperf=None, errors: dict | None = None) -> dict[str, dict]:
    """The throughput columns of every path, taken in turns: `runs` rounds,
    in each round every column once per path, the paths in turn (the order
    reversed every round). Round i of one path and round i of another ran
    within seconds of each other, so their ratio is free of the host's drift
    between rounds (ratios() pairs them). A path whose run fails leaves the
    turns with its error in `errors`; the others go on. -> key -> result
    (lists in round order, medians, CPU per Gbit)."""
    run_iperf = run_iperf or iperf
    errors = {} if errors is None else errors
    res = {key: {"single": [], "multi": [], "down": []} for key in paths}
    cpu = {key: {c: {side: 0.0 for side in p.pids} for c in ("up", "down")} for key, p in paths.items()}
    bits = {key: {"up": 0, "down": 0} for key in paths}
    for i, order in turns(paths, runs):
        for col, (streams, reverse) in COLUMNS.items():
            for key in order:
                if key in errors:
                    continue
                p = paths[key]
                before = cpu_of(p.pids)
                try:
                    r = run_iperf(p.lab, seconds, streams, dst=fam.dst, reverse=reverse)
                except Exception as e:   # this path is out; the others' turns go on
                    errors[key] = f"{type(e).__name__}: {e}"
                    log(f"{key}: FAILED in round {i + 1}: {errors[key]}")
                    continue
                after = cpu_of(p.pids)
                res[key][col].append(r["bps"])
                if streams == 1:    # CPU per Gbit: single-stream uploads and downloads
                    way = "down" if reverse else "up"
                    for side in p.pids:
                        cpu[key][way][side] += after[side] - before[side]
                    bits[key][way] += r["bytes"] * 8
        log(f"round {i + 1}/{runs} done: " + ", ".join(
            f"{k} {res[k]['single'][-1] / 1e6:.0f}" for k in order if k not in errors and res[k]["single"])
            + " Mbit/s single")
    out = {}
    for key, x in res.items():
        if key in errors:
            continue
        for col in COLUMNS:
            x[f"{col}_mbps"] = statistics.median(x[col]) / 1e6
        x["rounds"] = runs
        x["cpu_s"] = cpu[key]["up"]
        x["cpu_s_per_gbit"] = {s: (c / (bits[key]["up"] / 1e9) if bits[key]["up"] else None)
                               for s, c in cpu[key]["up"].items()}
        x["cpu_s_per_gbit_down"] = {s: (c / (bits[key]["down"] / 1e9) if bits[key]["down"] else None)
                                    for s, c in cpu[key]["down"].items()}
        x["single_bits"] = bits[key]["up"]
        out[key] = x
    return out


# ---------------------------------------------------------------- paths

def new_lab(topology=None):
    """A freshly built lab tgB<hex> (of ``topology``, default the three namespaces); one retry
    with a new prefix if building fails."""
    from tglab.lab import Lab
    for attempt in (1, 2):
        lab = Lab("tgB" + os.urandom(3).hex(), *([topology] if topology is not None else []))
        try:
            return lab.build() or lab
        except Exception as e:
            lab.destroy()
            if attempt == 2:
                raise
            log(f"building the lab failed ({str(e).splitlines()[0][:120]}); retrying once")
    raise AssertionError("unreachable")


# Each path as a context manager: up in a built lab, yielding its tunnel
# processes ({} for raw); paths_up() brings them up, measure_in_turns() and
# idle_rounds() take it from there.

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
            tg(lab, lab.gw, "serve", "-c", str(gw_conf))
            pids["gw"] = int((work / "gw" / "tunnelgate.pid").read_text())
            tg(lab, lab.client, "up", "-c", str(cl_conf))
            pids["client"] = int((work / "cl" / "tunnelgate.pid").read_text())
            yield {"client": pids["client"], "gw": pids["gw"]}
        except Exception as e:
            logs = "\n".join(f"--- {w} log ---\n{_tail(work / w / 'tunnelgate.log')}" for w in ("gw", "cl"))
            raise RuntimeError(f"{e}\n{logs}") from None
        finally:
            for ns, conf, side in ((lab.client, cl_conf, "client"), (lab.gw, gw_conf, "gw")):
                tg_down(lab, ns, conf, pids.get(side))
    return up


def tg_contracts(lab, work: Path, contract_kb: int) -> dict:
    """How many contracts the tunnelgate path bought, and packets that waited
    for one in vain (the configs are those _tg_configs wrote into `work`)."""
    gw_conf, cl_conf = work / "gateway.toml", work / "client.toml"
    gw = json.loads(tg(lab, lab.gw, "status", "--json", "-c", str(gw_conf)).stdout)
    bought = json.loads(tg(lab, lab.client, "contracts", "--all", "--json", "-c", str(cl_conf)).stdout)
    return {"contract_kb": contract_kb, "bought": len(bought),
            "dropped_waiting_for_contract": gw["stats"].get("drop_no_contract", 0)}


def idle_pings(ups: dict, fam: Family = IPV4, rounds: int = IDLE_ROUNDS, count: int = IDLE_PINGS,
               pinger=None) -> dict[str, dict]:
    """Idle ping of every path of `ups` (key -> a context manager as raw_up),
    all up at once in labs of their own: idle_rounds()."""
    with paths_up(ups, fam) as paths:
        return idle_rounds(paths, fam, rounds, count, pinger)


def idle_rounds(paths: dict[str, PathUp], fam: Family = IPV4, rounds: int = IDLE_ROUNDS,
                count: int = IDLE_PINGS, pinger=None) -> dict[str, dict]:
    """`rounds` rounds in which each path takes `count` pings in turn (the
    order reversed every round), so that the VM's drift falls on all of them
    alike -> key -> {"avg_ms": mean of its round averages, "rounds": [...]}."""
    pinger = pinger or ping
    for p in paths.values():
        pinger(p.lab, count=3, dst=fam.dst)      # handshake, contract: not idle figures
    got: dict[str, list[float]] = {key: [] for key in paths}
    for _, order in turns(paths, rounds):
        for key in order:
            got[key].append(pinger(paths[key].lab, count=count, dst=fam.dst)["avg_ms"])
    return {key: {"avg_ms": statistics.mean(v), "rounds": v, "count": count} for key, v in got.items()}


# ---------------------------------------------------------------- a run

def run_all(ups: dict, runs: int, seconds: float, fam: Family = IPV4,
            contract_kb: int = CONTRACT_KB) -> tuple[dict[str, dict], dict[str, str]]:
    """Every path of `ups` up at once, each in a lab of its own; first the
    first packet of each, then the throughput columns in turns
    (measure_in_turns), the ping under load of each in turn, the idle pings
    in turns (idle_rounds) -> (key -> result, key -> error of a path that
    failed; the others stand without it)."""
    errors: dict[str, str] = {}
    log(f"{len(ups)} paths, each in a lab of its own, up at once: {', '.join(ups)}")
    with paths_up(ups, fam, upstream=True, errors=errors) as paths:
        first = {}
        for key, p in paths.items():
            # the path's very first packet to the upstream host: for tunnelgate it is held
            # while the contract is proposed and accepted, then released
            try:
                first[key] = ping(p.lab, count=1, dst=fam.dst)["avg_ms"]
            except Exception as e:
                errors[key] = f"{type(e).__name__}: {e}"
        log(f"throughput: {runs} rounds, each path in turn, of iperf3 -t {seconds:g} "
            f"x {len(COLUMNS)} columns")
        results = measure_in_turns(paths, runs, seconds, fam, errors=errors)
        for key, res in results.items():
            res["first_ms"] = first[key]
            try:
                res["ping_load"] = ping_under_load(paths[key].lab, seconds, dst=fam.dst)
            except Exception as e:  # the throughput figures stand without it
                log(f"{key}: ping under load FAILED: {type(e).__name__}: {e}")
        if "tg" in results:
            try:
                c = results["tg"]["contracts"] = tg_contracts(paths["tg"].lab, paths["tg"].work, contract_kb)
                log(f"tunnelgate: {c['bought']} contracts of {c['contract_kb']} KB bought, "
                    f"packets dropped waiting for one: {c['dropped_waiting_for_contract']}")
            except Exception as e:
                log(f"tunnelgate: contracts query FAILED: {type(e).__name__}: {e}")
        if results:
            log(f"idle ping: {IDLE_ROUNDS} rounds of {IDLE_PINGS} pings, each path in turn")
            try:
                idle = idle_rounds({k: paths[k] for k in results}, fam)
            except Exception as e:  # the throughput figures stand without it
                log(f"idle ping: FAILED: {type(e).__name__}: {e}")
                idle = {}
            for key, v in idle.items():
                results[key]["ping_idle"] = v
    return results, errors


# ---------------------------------------------------------------- main

def two_hops(rows) -> dict | None:
    """The two-hop row against one hop, both measured in the same rounds: single-stream
    throughput ratio (median of the rounds' ratios) and the first packet's added latency
    (the relay buys upstream before it proposes downstream)."""
    from .bench_report import ratio_stats
    by = {r.key: r for r in rows}
    one, two = by.get("tg"), by.get("tg2")
    if not one or not two or not one.result or not two.result:
        return None
    st = ratio_stats(two.result.get("single"), one.result.get("single"))
    first = two.result["first_ms"] - one.result["first_ms"]
    text = (f"two hops over one hop: TCP 1 x{st['x']:.2f} [{st['lo']:.2f}-{st['hi']:.2f}] (target >= 0.6), "
            f"first packet {two.result['first_ms']:.1f} ms vs {one.result['first_ms']:.1f} ms ({first:+.1f} ms)")
    return {"single_x": st["x"], "single_range": [st["lo"], st["hi"]], "first_ms_added": first, "text": text}



def main(argv: list[str] | None = None) -> int:
    from tglab.lab import exit_on_sigterm
    exit_on_sigterm()
    if any(a == "--peers" or a.startswith("--peers=") for a in (sys.argv[1:] if argv is None else argv)):
        from . import scale   # one gateway, many peers and contracts: see tglab/scale.py
        return scale.main(sys.argv[1:] if argv is None else argv)
    if "--flood" in (sys.argv[1:] if argv is None else argv):
        print("bench: --flood runs tglab/flood.py (scripts/bench --flood, or python -m tglab.flood)",
              file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(prog="scripts/bench", description="tunnelgate vs wireguard-go, same lab")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 run of iperf3 -t 2 per column")
    ap.add_argument("--runs", type=int, default=None, help="iperf3 runs per column (default 3)")
    ap.add_argument("--time", type=float, default=None, help="iperf3 -t seconds (default 5)")
    ap.add_argument("--json", type=Path, help="write all numbers to this file")
    ap.add_argument("--only", default="raw,wg-deb,wg-sid,tg,tg2",
                    help="rows, comma-separated (raw,wg-deb,wg-sid,tg,tg2)")
    ap.add_argument("--contract-kb", type=int, default=CONTRACT_KB,
                    help=f"tunnelgate row: the gateway's contract_kb (default {CONTRACT_KB}, the daemon's)")
    ap.add_argument("--no-fetch", action="store_true", help="do not download the sid wireguard-go")
    ap.add_argument("--ipv6", action="store_true",
                    help="every row over IPv6 (the upstream's 2001:2:0:2::2; dual-stack tunnels)")
    ap.add_argument("--cc", metavar="NAME",
                    help="TCP congestion control of the iperf3 senders (iperf3 -C: cubic, bbr, reno); "
                         "default: the machine's (net.ipv4.tcp_congestion_control)")
    a = ap.parse_args(argv)
    CONGESTION[0] = a.cc
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
    if "tg2" in wanted:
        from .relay_env import relay_path
        rows.append(Row("tg2", "tunnelgate, two hops", version=f"client - relay - gateway, {a.contract_kb} KB contracts"))
        ups["tg2"] = relay_path(a.contract_kb)

    print(f"versions: {platform.node()} kernel {platform.release()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, "
          f"{subprocess.run(['iperf3', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}, "
          f"TCP congestion control {a.cc or default_cc() + ' (the machine default)'}")
    for r in rows:
        if r.version:
            print(f"  {r.name}: {r.version}")
    fam = IPV6 if a.ipv6 else IPV4
    print(f"path: {PATH_NOTE}" + (f"; over IPv6: {fam.dst}, tunnels dual-stack" if a.ipv6 else ""), flush=True)

    started = time.monotonic()
    for row in rows:
        if row.key not in ups:
            log(f"{row.name}: skipped ({row.error})")
    results, errors = run_all(ups, runs, seconds, fam, a.contract_kb)
    for row in rows:
        row.result = results.get(row.key)
        row.error = errors.get(row.key, row.error)

    print()
    print(table(rows, runs, seconds, IDLE_ROUNDS, IDLE_PINGS))
    rs = ratios(rows)
    print()
    print(ratio_text(rs))
    two = two_hops(rows)
    if two:
        print(two["text"])
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
            "ratios": rs, "two_hops": two,
            # a ratio is the median of the rounds' ratios; listed here when its rounds
            # spread more than spread_limit around it (or there was one round)
            "spread_limit": SPREAD, "inconclusive": inconclusive(rs)}, indent=2) + "\n")
        print(f"\nnumbers written to {a.json}")
    return 0 if any(r.result for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
