"""One authenticated client sends one UDP datagram each to many distinct
destinations; what does it cost the gateway (RSS, database, event rows, log)?

    scripts/spray [--count N] [--rate PPS] [--settle S] [--json FILE]

Destinations are 198.19.0.0/16 then 198.18.16.0-198.18.255.255 (never the lab's
links 198.18.1/24 and 198.18.2/24): the client routes 0.0.0.0/0 into its tunnel,
the gateway forwards what it forwards to the upstream namespace, which has no
route back and drops it, so nothing leaves the lab's namespaces.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from tglab.lab import UPSTREAM, Lab
from tglab.configs import write_pair

MAX_COUNT = 110_000         # the destination ranges hold 126,976 addresses
TG = [sys.executable, "-m", "tunnelgate.cli"]

# Runs in the client namespace: count datagrams, each to its own destination, paced at
# `rate` per second and stopped after `limit_s` whatever the count reached.
SENDER = r"""
import socket, sys, time
count, rate, limit_s = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
def dst(i):
    if i < 65536:
        return f"198.19.{i >> 8}.{i & 255}"
    i -= 65536
    return f"198.18.{16 + (i >> 8)}.{i & 255}"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
start = time.monotonic()
sent = errors = 0
for i in range(count):
    if time.monotonic() - start > limit_s:
        break
    ahead = i / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
    try:
        s.sendto(b"spray", (dst(i), 9))
        sent += 1
    except OSError:
        errors += 1
print(sent, errors, round(time.monotonic() - start, 3))
"""


def send_spray(lab: Lab, count: int, rate: float = 20_000, limit_s: float = 60) -> dict:
    """From the client namespace, one datagram to each of ``count`` destinations."""
    if not 0 < count <= MAX_COUNT:
        raise ValueError(f"count must be 1..{MAX_COUNT}")
    out = lab.python(lab.client, SENDER, str(count), str(rate), str(limit_s), timeout=limit_s + 30)
    sent, errors, secs = out.stdout.split()
    return {"sent": int(sent), "send_errors": int(errors), "seconds": float(secs)}


def measure(state_dir: Path) -> dict:
    """What the gateway holds: RSS of its daemon, database (with WAL), event rows, log."""
    pid = int((state_dir / "tunnelgate.pid").read_text())
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    db = state_dir / "tunnelgate.db"
    db_bytes = sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = con.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        con.close()
    log, err = state_dir / "tunnelgate.log", state_dir / "daemon.stderr"
    log_text = log.read_bytes() if log.exists() else b""
    return {"rss_kb": rss_kb, "db_bytes": db_bytes, "event_rows": rows, "log_bytes": len(log_text),
            "log_lines": log_text.count(b"\n"), "log_queue_full": log_text.count(b"is full"),
            "stderr_bytes": err.stat().st_size if err.exists() else 0}


def market(lab: Lab, gateway_conf: Path) -> dict:
    """The gateway's view of the sprayer: its peer standing, live contracts, control stats."""
    st = json.loads(lab.run(lab.gw, *TG, "status", "-c", str(gateway_conf), "--json", timeout=60).stdout)
    mk = st.get("market", {})
    peers = mk.get("peers", {})
    return {"peer": next(iter(peers.values()), {}), "live_contracts": len(mk.get("contracts", [])),
            "control_stats": st.get("control_stats", {})}


def ping_ok(lab: Lab, tries: int = 30) -> bool:
    """A legit ping through the tunnel gets an answer (within ``tries`` seconds)."""
    for _ in range(tries):
        p = lab.run(lab.client, "ping", "-n", "-c", "1", "-W", "1", UPSTREAM, check=False, timeout=10)
        if p.returncode == 0:
            return True
    return False


def run(count: int, rate: float, settle: float, prefix: str, keep_log: str | None = None) -> dict:
    d = Path(tempfile.mkdtemp(prefix="tg-spray-", dir="/tmp"))
    pair = write_pair(d)
    with Lab(prefix) as lab:
        lab.build()
        gw_dir = d / "gw"

        def tg(ns, *args):
            return lab.run(ns, *TG, *args, timeout=60)
        try:
            tg(lab.gw, "serve", "-c", str(pair.gateway))
            tg(lab.client, "up", "-c", str(pair.client))
            if not ping_ok(lab):
                raise SystemExit("spray: no ping through the tunnel before the spray")
            time.sleep(1.5)
            before = measure(gw_dir)
            sent = send_spray(lab, count, rate)
            time.sleep(settle)          # proposals time out, events are flushed
            after = measure(gw_dir)
            return {"count": count, "rate": rate, "spray": sent, "before": before, "after": after,
                    **market(lab, pair.gateway), "ping_after": ping_ok(lab)}
        finally:
            for ns, conf in ((lab.client, pair.client), (lab.gw, pair.gateway)):
                lab.run(ns, *TG, "down", "-c", str(conf), check=False, timeout=60)
            if keep_log and (gw_dir / "tunnelgate.log").exists():
                shutil.copy(gw_dir / "tunnelgate.log", keep_log)
            shutil.rmtree(d, ignore_errors=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="scripts/spray", description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=20_000, help="datagrams per second (paced)")
    ap.add_argument("--settle", type=float, default=12, help="seconds between the spray and the 'after'")
    ap.add_argument("--prefix", default="tgspray" + secrets.token_hex(2), help="lab namespace prefix")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--keep-log", help="copy the gateway's log here")
    a = ap.parse_args(argv)
    res = run(a.count, a.rate, a.settle, a.prefix, a.keep_log)
    text = json.dumps(res, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
