"""The README's first command: a gateway and a client in network namespaces,
a local Cashu mint as the payment rail, real traffic through the tunnel so
contracts are proposed, paid in ecash and renewed, the daemons' own status
(and the TUI when run in a terminal), then clean-up.

Run as root: `python -m tglab.demo [--dummy] [--no-tui]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .lab import GW_LINK, UPSTREAM, UPSTREAM6, Lab, exit_on_sigterm
from .configs import TUNNEL6, write_pair

TG = [sys.executable, "-m", "tunnelgate.cli"]
ROOT = Path(__file__).resolve().parents[1]
MINT_PORT = 3338
FUND_SAT = 2000


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scripts/demo", description=(
        "a gateway and a client in network namespaces, a local Cashu mint, real traffic "
        "through the tunnel, status and the TUI, then clean-up (as root)"))
    ap.add_argument("--dummy", action="store_true", help="no mint: the dummy payment backend (no money)")
    ap.add_argument("--no-tui", action="store_true",
                    help="do not open the TUI at the end (it opens only in a terminal)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dummy = args.dummy
    want_tui = sys.stdout.isatty() and not args.no_tui
    if os.geteuid() != 0:
        print("demo: run as root (it builds network namespaces)", file=sys.stderr)
        return 1
    exit_on_sigterm()
    prefix = "tgdemo" + os.urandom(2).hex()
    work = Path(tempfile.mkdtemp(prefix="tgdemo-"))
    lab = Lab(prefix)
    try:
        say(f"building the lab: namespaces {lab.client}, {lab.gw}, {lab.up}")
        lab.build()
        files = lab.start_upstream({"demo-20M.bin": 20_000_000})
        if dummy:
            gw_pay = cl_pay = 'backend = "dummy"'
        else:
            gw_pay, cl_pay = start_mint(lab, work)
        pair = write_pair(work, gateway_extra=f"""[pricing]
default_price = "0.5"        # msat per KB
floor_price = "0.3"
contract_kb = 5000           # 5 MB per contract: a 20 MB download renews a few times
contract_time_s = 120
grace_time_s = 10
[[pricing.route]]            # the gateway's own mint is free to reach
prefix = "{GW_LINK}/32"
price = "0"
[payment]
{gw_pay}
""", client_extra=f"""[policy]
max_price = "0.4"            # below the asking price: the client counters, the gateway meets it
counter_fraction = "0.8"
data_renewal_kb = 2000
time_renewal_s = 20
max_spend_per_hour = 100000  # msat
[payment]
{cl_pay}
""", routes=("0.0.0.0/0", "::/0"), tunnel_address6=TUNNEL6)
        gw_conf, cl_conf = pair.gateway, pair.client

        def tg(ns, *args):
            r = lab.run(ns, *TG, *args, check=False, timeout=60)
            print((r.stdout + r.stderr).rstrip())
            if r.returncode:
                raise SystemExit(f"demo: `tunnelgate {' '.join(args)}` failed")

        say("without the tunnel the client cannot reach the upstream host")
        r = lab.run(lab.client, "ping", "-c", "1", "-W", "1", UPSTREAM, check=False)
        print("ping", UPSTREAM, "->", "reachable (unexpected!)" if r.returncode == 0 else "unreachable")

        say("tunnelgate serve (gateway namespace)")
        tg(lab.gw, "serve", "-c", str(gw_conf))
        say("tunnelgate up (client namespace)")
        tg(lab.client, "up", "-c", str(cl_conf))

        say(f"ping {UPSTREAM} and {UPSTREAM6} through the tunnel (dual stack)")
        print(lab.run(lab.client, "ping", "-n", "-c", "3", "-i", "0.3", UPSTREAM, check=False).stdout.rstrip())
        print(lab.run(lab.client, "ping", "-n", "-c", "3", "-i", "0.3", UPSTREAM6, check=False).stdout.rstrip())

        say("download 20 MB through the tunnel and check its sha256")
        t0 = time.monotonic()
        data = lab.run(lab.client, "curl", "-sS", "--max-time", "60", f"http://{UPSTREAM}:8080/demo-20M.bin",
                       text=False, timeout=90).stdout
        took = time.monotonic() - t0
        ok = hashlib.sha256(data).hexdigest() == files["demo-20M.bin"]
        print(f"{len(data):,} bytes in {took:.2f} s ({len(data) * 8 / took / 1e6:.0f} Mbit/s), "
              f"sha256 {'matches' if ok else 'MISMATCH'}")

        time.sleep(1.5)  # let the last payment settle and usage reports arrive
        say("tunnelgate status (client)")
        tg(lab.client, "status", "-c", str(cl_conf))
        say("tunnelgate status (gateway)")
        tg(lab.gw, "status", "-c", str(gw_conf))

        if not dummy:
            say("money: the client's wallet and its prepaid credit at the gateway")
            st = json.loads(lab.run(lab.client, *TG, "status", "-c", str(cl_conf), "--json", check=False).stdout or "{}")
            gw = json.loads(lab.run(lab.gw, *TG, "status", "-c", str(gw_conf), "--json", check=False).stdout or "{}")
            wallet = st.get("wallet") or {}
            print(f"client wallet: {wallet.get('balance_msat', 0) // 1000} sat of ecash (funded {FUND_SAT} sat)")
            print(f"credit at the gateway, as the client knows it: {st.get('credit_msat', 0)} msat")
            print(f"credit per client, in the gateway's journal: {(gw.get('payment') or {}).get('credit_msat')}")
            paid = [c for c in gw.get("market", {}).get("contracts", []) if c.get("paid")]
            print(f"live paid contracts at the gateway: {len(paid)}, "
                  f"of which paid from credit: {sum(1 for c in paid if c.get('credit'))}")

        say("tunnelgate history (client): every contract and what it cost")
        tg(lab.client, "history", "-c", str(cl_conf))

        if want_tui:
            say("tunnelgate tui (client): press q to quit")
            subprocess.run(["ip", "netns", "exec", lab.client, *TG, "tui", "-c", str(cl_conf)])

        say("tunnelgate down: routes restored")
        tg(lab.client, "down", "-c", str(cl_conf))
        tg(lab.gw, "down", "-c", str(gw_conf))
        return 0 if ok else 1
    finally:
        for conf in (work / "client.toml", work / "gateway.toml"):
            if conf.exists():
                subprocess.run(["ip", "netns", "exec", lab.client if "client" in conf.name else lab.gw,
                                *TG, "down", "-c", str(conf)], capture_output=True)
        subprocess.run([str(ROOT / "scripts" / "mint"), "stop", str(work / "mint")], capture_output=True)
        lab.destroy()
        shutil.rmtree(work, ignore_errors=True)
        say("lab removed")


def start_mint(lab: Lab, work: Path) -> tuple[str, str]:
    """A Cashu mint on the gateway's link address (FakeWallet Lightning: no real money
    enters it), the gateway's P2PK key, and a client wallet funded with FUND_SAT."""
    url = f"http://{GW_LINK}:{MINT_PORT}"
    say(f"starting a local Cashu mint at {url} (gateway namespace) and funding the client's wallet")
    subprocess.run([str(ROOT / "scripts" / "mint"), "start", str(work / "mint"), "--listen",
                    f"{GW_LINK}:{MINT_PORT}", "--netns", lab.gw], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "tunnelgate.payments.cashu", "keygen", str(work / "p2pk.key")],
                   check=True, stdout=subprocess.DEVNULL)
    lab.run(lab.client, str(ROOT / "scripts" / "mint"), "fund", str(work / "wallet"), str(FUND_SAT),
            "--mint", url, timeout=120)
    print(f"client wallet funded with {FUND_SAT} sat of ecash")
    gw = (f'backend = "cashu"\nmints = ["{url}"]\np2pk_key_file = "p2pk.key"\n'
          f'wallet_dir = "{work / "gw-wallet"}"')
    cl = (f'backend = "cashu"\nmint_url = "{url}"\nwallet_dir = "{work / "wallet"}"\n'
          'prepay_msat = 20000          # pay 20 sat at a time: later contracts come out of the credit\n'
          'low_balance_msat = 500000    # warn below 500 sat')
    return gw, cl


if __name__ == "__main__":
    sys.exit(main())
