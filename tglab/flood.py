"""Flood benchmark: what a flood of the gateway's port costs a paying client,
tunnelgate against wireguard-go in the same run (issue 20, item 3).

    scripts/bench --flood [--flood-seconds S] [--runs N] [--only wg-deb,tg] [--json FILE]

Each path (wg-deb: Debian's wireguard-go; wg-sid: sid's, fetched; tg:
tunnelgate) comes up in a lab of its own with a stranger on the client's link
(the attacker). In every round each path takes, in turn, each flood mode:

  none     no flood: the reference
  garbage  random datagrams (1-256 bytes) from the attacker's own address
  initrand datagrams of a valid initiation's length and type word, random after it
  replay   one valid initiation, captured with tcpdump on the client's link as the
           path came up, replayed from many spoofed sources (198.18.1.10-250, random
           ports; a raw socket with IP_HDRINCL in the attacker's namespace)

For a flood mode one process floods the gateway's port for S seconds (default
20; bounded in time and in count, FLOOD_MAX_PACKETS), and meanwhile the client
runs a single-stream iperf3 upload, then a download, of (S - 4) / 2 seconds
each (at least 1), the same length as in "none". Reported per path and mode:
throughputs and their ratio to the same round's "none"; datagrams sent and
those that came back to the attacker's address (an nft counter in its
namespace: source port = the gateway's port); the gateway process's CPU
seconds and, for tunnelgate, those of its handshake worker thread (comm
`tg-handshakes`, from /proc/PID/task/TID/stat). Targets: ratio >= 0.5 and >=
wireguard-go's ratio under the same flood; 0 datagrams back for garbage and
initrand. A benchmark: nothing asserted, figures drift with the host's load.

The flooder is this module run as `python -m tglab.flood send ...` in the
attacker's namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from .lab import REPO_ROOT
from .topology import GW_LINK

MODES = ("none", "garbage", "initrand", "replay")
FLOOD_MAX_PACKETS = 20_000_000     # a flooder stops at this many datagrams whatever its time
SPOOF_NET = "198.18.1."            # spoofed sources: the client's link, hosts SPOOF_HOSTS
SPOOF_HOSTS = range(10, 251)
COUNT_TABLE = "tgflood"
HANDSHAKE_THREAD = "tg-handshakes"


def log(msg: str) -> None:
    print(f"[flood {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the flooder

def _pool(mode: str, init: bytes, dst: str, port: int, rng: random.Random) -> list[bytes]:
    if mode == "garbage":
        return [rng.randbytes(rng.randint(1, 256)) for _ in range(1024)]
    if mode == "initrand":
        return [init[:4] + rng.randbytes(len(init) - 4) for _ in range(1024)]
    out = []
    for _ in range(4096):
        src = SPOOF_NET + str(rng.choice(SPOOF_HOSTS))
        udp = struct.pack("!HHHH", rng.randint(1024, 65535), port, 8 + len(init), 0) + init
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))     # the kernel fills id and checksum
        out.append(ip + udp)
    return out


def send_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m tglab.flood send")
    ap.add_argument("mode", choices=MODES[1:])
    ap.add_argument("dst")
    ap.add_argument("port", type=int)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--max-packets", type=int, default=FLOOD_MAX_PACKETS)
    ap.add_argument("--init", default="", help="hex of a captured initiation (initrand, replay)")
    a = ap.parse_args(argv)
    init = bytes.fromhex(a.init)
    if a.mode != "garbage" and len(init) < 8:
        print("flood: initrand and replay need --init (hex of a captured initiation)", file=sys.stderr)
        return 2
    pool = _pool(a.mode, init, a.dst, a.port, random.Random(1))
    if a.mode == "replay":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)     # IP_HDRINCL implied
        s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        to = (a.dst, 0)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        to = (a.dst, a.port)
    send, n, sent = s.sendto, len(pool), 0
    end = time.monotonic() + a.seconds
    limit = min(a.max_packets, FLOOD_MAX_PACKETS)
    while sent < limit and time.monotonic() < end:
        for i in range(1024):
            try:
                send(pool[(sent + i) % n], to)
            except OSError:         # ENOBUFS and the like: a flood loses some
                pass
        sent += 1024
    print(sent, flush=True)
    return 0


# ---------------------------------------------------------------- measuring

def _ticks(path: Path) -> int:
    st = path.read_text()
    f = st[st.rindex(")") + 2:].split()
    return int(f[11]) + int(f[12])


def thread_cpu(pid: int, comm: str) -> float | None:
    """CPU seconds of the threads of `pid` named `comm`; None if there is none."""
    total, found = 0, False
    for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):
        try:
            if (task / "comm").read_text().strip() == comm:
                total += _ticks(task / "stat")
                found = True
        except OSError:
            continue
    return total / os.sysconf("SC_CLK_TCK") if found else None


def process_cpu(pid: int) -> float:
    return _ticks(Path(f"/proc/{pid}/stat")) / os.sysconf("SC_CLK_TCK")


def count_back(lab, ns: str, port: int) -> None:
    """(Re)create, in the attacker's namespace, a counter of UDP arriving from the gateway's port."""
    lab.run(ns, "nft", "-f", "-", input=f"""table inet {COUNT_TABLE}
delete table inet {COUNT_TABLE}
table inet {COUNT_TABLE} {{
    counter back {{ }}
    chain in {{
        type filter hook prerouting priority -300; policy accept;
        udp sport {port} counter name "back"
    }}
}}
""")


def back(lab, ns: str) -> int:
    out = json.loads(lab.run(ns, "nft", "-j", "list", "counters", "table", "inet", COUNT_TABLE).stdout)
    return sum(c["counter"]["packets"] for c in out["nftables"] if "counter" in c)


def _read_pcap_udp_payload(path: Path) -> bytes:
    """The UDP payload of the first packet of an Ethernet/IPv4 pcap file."""
    data = path.read_bytes()
    if len(data) < 24 + 16:
        raise RuntimeError("tcpdump captured nothing")
    incl = struct.unpack_from("<I", data, 24 + 8)[0]
    frame = data[40:40 + incl]
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    return ip[ihl + 8:]


@contextlib.contextmanager
def capturing_init(lab, port: int, work: Path):
    """tcpdump on the client's link for the first initiation to `port`; yields
    a function returning its bytes once the tunnel is up (waits up to 15 s)."""
    pcap = work / "init.pcap"
    p = lab.popen(lab.client, "tcpdump", "-i", "veth0", "-n", "-U", "-c", "1", "-w", str(pcap),
                  f"udp dst port {port} and udp[8] = 1", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    line = p.stderr.readline().decode(errors="replace")          # "listening on ...": it captures now
    if "listening" not in line:
        raise RuntimeError(f"tcpdump did not start: {line.strip()}")

    def get() -> bytes:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            raise RuntimeError(f"no initiation to port {port} seen on the client's link") from None
        return _read_pcap_udp_payload(pcap)
    try:
        yield get
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def flood_up(up, port: int):
    """A bench path (bench.wg_up / bench.tg_up) plus the attacker: yields
    (pids, captured initiation, attacker namespace, gateway port)."""
    @contextlib.contextmanager
    def wrapped(lab, work, fam):
        with capturing_init(lab, port, work) as captured:
            with up(lab, work, fam) as pids:
                init = captured()
                stranger = lab.add_stranger()
                count_back(lab, stranger, port)
                gw_conf = work / "gateway.toml"
                flood_stats = (lambda: _tg_flood_stats(lab, gw_conf)) if gw_conf.exists() else None
                yield {"pids": pids, "init": init, "stranger": stranger, "port": port,
                       "flood_stats": flood_stats}
    return wrapped


def _tg_flood_stats(lab, gw_conf: Path) -> dict:
    from .daemons import tg
    st = json.loads(tg(lab, lab.gw, "status", "--json", "-c", str(gw_conf)).stdout)
    return {k: v for k, v in st.get("flood", {}).items() if isinstance(v, int) and not isinstance(v, bool)
            and k != "worker_tid"}


def start_flood(lab, ns: str, mode: str, port: int, seconds: float, init: bytes) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return lab.popen(ns, sys.executable, "-m", "tglab.flood", "send", mode, GW_LINK, str(port),
                     "--seconds", str(seconds), "--init", init.hex(), stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, env=env)


def one_turn(p, mode: str, flood_s: float, iperf_s: int, run_iperf) -> dict:
    """One path's run of one mode: flood (unless none) around an upload and a download."""
    lab, info = p.lab, p.pids
    gw = info["pids"]["gw"]
    back0, cpu0, hs0 = back(lab, info["stranger"]), process_cpu(gw), thread_cpu(gw, HANDSHAKE_THREAD)
    stats0 = info["flood_stats"]() if info["flood_stats"] else None
    flooder = None
    if mode != "none":
        flooder = start_flood(lab, info["stranger"], mode, info["port"], flood_s, info["init"])
        time.sleep(1)
    res: dict = {"mode": mode}
    try:
        for key, reverse in (("up_bps", False), ("down_bps", True)):
            try:
                res[key] = run_iperf(lab, iperf_s, 1, reverse=reverse)["bps"]
            except RuntimeError as e:
                # a flood can starve a path's transfer until iperf3 gives up (wireguard-go under
                # the replay flood): that is a measurement, 0, not the end of the bench
                res[key] = 0.0
                res.setdefault("transfer_errors", []).append(str(e).splitlines()[0][:200])
    finally:
        if flooder is not None:
            try:
                out, err = flooder.communicate(timeout=flood_s + 30)
                res["sent"] = int(out.split()[-1]) if out.split() else None
                if flooder.returncode:
                    res["flood_error"] = err.decode(errors="replace").strip()[-300:]
            except subprocess.TimeoutExpired:
                flooder.kill()
                flooder.wait()
                res["sent"] = None
    time.sleep(0.5)
    hs1 = thread_cpu(gw, HANDSHAKE_THREAD)
    res["back"] = back(lab, info["stranger"]) - back0
    res["gw_cpu_s"] = process_cpu(gw) - cpu0
    res["hs_cpu_s"] = hs1 - hs0 if hs0 is not None and hs1 is not None else None
    if stats0 is not None:      # tunnelgate's `status` flood counts during this run
        stats1 = info["flood_stats"]()
        res["gw_flood"] = {k: v - stats0.get(k, 0) for k, v in stats1.items()}
    return res


def measure(paths: dict, runs: int, flood_s: float, run_iperf=None) -> dict[str, list[dict]]:
    """key -> the runs of every mode, in turns (bench.turns: the order of the
    paths reversed every round)."""
    from .bench import iperf, turns
    run_iperf = run_iperf or iperf
    iperf_s = max(1, int((flood_s - 4) / 2))
    out: dict[str, list[dict]] = {k: [] for k in paths}
    for i, order in turns(paths, runs):
        for mode in MODES:
            for key in order:
                r = one_turn(paths[key], mode, flood_s, iperf_s, run_iperf)
                r["round"] = i
                out[key].append(r)
                log(f"round {i + 1} {key} {mode}: up {r['up_bps'] / 1e6:.0f} down {r['down_bps'] / 1e6:.0f} "
                    f"Mbit/s, sent {r.get('sent')}, back {r['back']}"
                    + (f", gateway {r['gw_flood']}" if r.get("gw_flood") else ""))
    return out


# ---------------------------------------------------------------- report

def summarize(results: dict[str, list[dict]]) -> dict[str, dict[str, dict]]:
    """key -> mode -> medians over rounds: up/down Mbit/s, their ratios to the
    same round's "none", sent, back, CPU seconds."""
    import statistics as st
    out: dict[str, dict[str, dict]] = {}
    for key, runs in results.items():
        base = {r["round"]: r for r in runs if r["mode"] == "none"}
        out[key] = {}
        for mode in MODES:
            rs = [r for r in runs if r["mode"] == mode]
            if not rs:
                continue

            def med(f):
                xs = [x for x in map(f, rs) if x is not None]
                return st.median(xs) if xs else None
            out[key][mode] = {
                "up_mbps": med(lambda r: r["up_bps"] / 1e6), "down_mbps": med(lambda r: r["down_bps"] / 1e6),
                "up_ratio": med(lambda r: r["up_bps"] / base[r["round"]]["up_bps"]),
                "down_ratio": med(lambda r: r["down_bps"] / base[r["round"]]["down_bps"]),
                "sent": med(lambda r: r.get("sent")), "back": max(r["back"] for r in rs),
                "gw_cpu_s": med(lambda r: r["gw_cpu_s"]), "hs_cpu_s": med(lambda r: r["hs_cpu_s"])}
    return out


def _f(x, spec=".0f") -> str:
    return "-" if x is None else format(x, spec)


def table(summary: dict[str, dict[str, dict]], flood_s: float) -> str:
    lines = [f"{'path':8} {'flood':9} {'up Mbit/s':>10} {'x':>5} {'down Mbit/s':>12} {'x':>5} "
             f"{'sent':>9} {'back':>6} {'gw CPU s':>9} {'hs thread s':>11}"]
    for key, modes in summary.items():
        for mode, m in modes.items():
            lines.append(f"{key:8} {mode:9} {_f(m['up_mbps']):>10} {_f(m['up_ratio'], '.2f'):>5} "
                         f"{_f(m['down_mbps']):>12} {_f(m['down_ratio'], '.2f'):>5} {_f(m['sent']):>9} "
                         f"{m['back']:>6} {_f(m['gw_cpu_s'], '.1f'):>9} {_f(m['hs_cpu_s'], '.2f'):>11}")
    lines.append(f"floods of {flood_s:g} s; x = ratio to the same round's no-flood run (median over rounds); "
                 "back = datagrams that reached the attacker's address from the gateway port; "
                 "hs thread = tunnelgate's handshake worker")
    return "\n".join(lines)


def verdicts(summary: dict[str, dict[str, dict]]) -> list[str]:
    """The issue's targets, one line each, for tunnelgate against the first wireguard-go row."""
    tg = summary.get("tg")
    ref_key = next((k for k in summary if k.startswith("wg")), None)
    if tg is None:
        return []
    out = []
    for mode in MODES[1:]:
        m = tg.get(mode)
        if m is None:
            continue
        for way in ("up", "down"):
            x = m[f"{way}_ratio"]
            ref = summary[ref_key][mode][f"{way}_ratio"] if ref_key and mode in summary[ref_key] else None
            ok = x is not None and x >= 0.5 and (ref is None or x >= ref)
            out.append(f"{mode:9} {way:4} tg x{_f(x, '.2f')} vs {ref_key or 'wg'} x{_f(ref, '.2f')}: "
                       f"{'meets' if ok else 'MISSES'} the target (>= 0.5 and >= wireguard-go's)")
        if mode != "replay":
            out.append(f"{mode:9} back {m['back']}: {'meets' if m['back'] == 0 else 'MISSES'} the target (0)")
    return out


def main(argv: list[str]) -> int:
    from . import bench, wggo, wggo_fetch
    from .daemons import TG_PORT
    ap = argparse.ArgumentParser(prog="scripts/bench --flood", description=__doc__.split("\n\n")[0])
    ap.add_argument("--flood-seconds", type=float, default=20.0, help="length of each flood (default 20)")
    ap.add_argument("--runs", type=int, default=1, help="rounds (default 1)")
    ap.add_argument("--only", default="wg-deb,tg", help="paths, comma-separated (wg-deb,wg-sid,tg)")
    ap.add_argument("--json", type=Path, help="write all numbers to this file")
    a = ap.parse_args([x for x in argv if x != "--flood"])
    if os.geteuid() != 0:
        print("bench --flood: run as root (it builds network namespaces)", file=sys.stderr)
        return 1
    for tool in ("iperf3", "nft", "ip", "tcpdump"):
        if not shutil.which(tool):
            print(f"bench --flood: {tool} missing; run scripts/setup", file=sys.stderr)
            return 1
    ups = {}
    for key in (k.strip() for k in a.only.split(",") if k.strip()):
        if key == "tg":
            ups[key] = flood_up(bench.tg_up(), TG_PORT)
        elif key == "wg-deb" and Path(wggo.DEBIAN_BINARY).exists():
            ups[key] = flood_up(bench.wg_up(wggo.DEBIAN_BINARY), wggo.PORT)
        elif key == "wg-sid":
            try:
                ups[key] = flood_up(bench.wg_up(wggo_fetch.fetch()), wggo.PORT)
            except wggo_fetch.FetchError as e:
                log(f"wg-sid skipped: {e}")
        else:
            log(f"{key}: skipped (unknown, or its binary is not installed)")
    errors: dict[str, str] = {}
    with bench.paths_up(ups, upstream=True, errors=errors) as paths:
        for key, err in errors.items():
            log(f"{key} did not come up: {err}")
        if not paths:
            return 1
        results = measure(paths, a.runs, a.flood_seconds)
    summary = summarize(results)
    print(table(summary, a.flood_seconds))
    print()
    print("\n".join(verdicts(summary)))
    if a.json:
        a.json.write_text(json.dumps({"flood_seconds": a.flood_seconds, "runs": a.runs, "results": results,
                                      "summary": summary, "errors": errors}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["send"]:
        sys.exit(send_main(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
