"""The README's first command: a gateway and a client in network namespaces,
real traffic through the tunnel, the daemons' own status, then clean-up.

Run as root: `python -m tunnelgate.lab.demo`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import keys
from . import GW_LINK, UPSTREAM, Lab

TG = [sys.executable, "-m", "tunnelgate.cli"]


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (it builds network namespaces)", file=sys.stderr)
        return 1
    prefix = "tgdemo" + os.urandom(2).hex()
    work = Path(tempfile.mkdtemp(prefix="tgdemo-"))
    lab = Lab(prefix)
    try:
        say(f"building the lab: namespaces {lab.client}, {lab.gw}, {lab.up}")
        lab.build()
        files = lab.start_upstream({"demo-20M.bin": 20_000_000})
        gw_key, cl_key = keys.generate(), keys.generate()
        keys.write_private(work / "gateway.key", gw_key)
        keys.write_private(work / "client.key", cl_key)
        gw_conf, cl_conf = work / "gateway.toml", work / "client.toml"
        gw_conf.write_text(f"""[node]
private_key_file = "gateway.key"
state_dir = "gw"
[link]
listen = "{GW_LINK}:51900"
[network]
tun = "tgs0"
address = "100.64.0.1/24"
upstream_interface = "veth-up"
""")
        cl_conf.write_text(f"""[node]
private_key_file = "client.key"
state_dir = "client"
[gateway]
endpoint = "{GW_LINK}:51900"
public_key = "{keys.b64(keys.public_of(gw_key))}"
[network]
tun = "tg0"
routes = ["0.0.0.0/0"]
""")

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

        say(f"ping {UPSTREAM} through the tunnel")
        print(lab.run(lab.client, "ping", "-n", "-c", "3", "-i", "0.3", UPSTREAM, check=False).stdout.rstrip())

        say("download 20 MB through the tunnel and check its sha256")
        t0 = time.monotonic()
        data = lab.run(lab.client, "curl", "-sS", "--max-time", "60", f"http://{UPSTREAM}:8080/demo-20M.bin",
                       text=False, timeout=90).stdout
        took = time.monotonic() - t0
        ok = hashlib.sha256(data).hexdigest() == files["demo-20M.bin"]
        print(f"{len(data):,} bytes in {took:.2f} s ({len(data) * 8 / took / 1e6:.0f} Mbit/s), "
              f"sha256 {'matches' if ok else 'MISMATCH'}")

        say("tunnelgate status (client)")
        tg(lab.client, "status", "-c", str(cl_conf))
        say("tunnelgate status (gateway)")
        tg(lab.gw, "status", "-c", str(gw_conf))

        say("tunnelgate down: routes restored")
        tg(lab.client, "down", "-c", str(cl_conf))
        tg(lab.gw, "down", "-c", str(gw_conf))
        return 0 if ok else 1
    finally:
        for conf in (work / "client.toml", work / "gateway.toml"):
            if conf.exists():
                subprocess.run(["ip", "netns", "exec", lab.client if "client" in conf.name else lab.gw,
                                *TG, "down", "-c", str(conf)], capture_output=True)
        lab.destroy()
        shutil.rmtree(work, ignore_errors=True)
        say("lab removed")


if __name__ == "__main__":
    sys.exit(main())
