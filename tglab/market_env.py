"""A client and N gateways of the market lab (topology.market) with real daemons: keys,
configs, start, stop, and the client's control requests. Used by the market tests
(tests/integration/test_market.py) and `scripts/bench --failover` (tglab/failover.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tunnelgate import keys
from .configs import TUNNEL6
from .topology import market_gateway

PORT = 51900
TG = [sys.executable, "-m", "tunnelgate.cli"]


class MarketEnv:
    """gateways: {i: price text} (1-based, the gateway's [pricing] default_price);
    client_extra / gateway_extra: more TOML; mdns: gateways advertise and the client
    discovers instead of listing them ([[gateways]] otherwise); ipv6: dual-stack tunnels
    (each gateway's pool also TUNNEL6) and the client routes ::/0 as well; pools: {i:
    [network] address} for gateways whose tunnel pool differs (default 100.64.0.1/24)."""

    def __init__(self, lab, prices: dict[int, str], client_extra: str = "", gateway_extra: str = "",
                 mdns: bool = False, listed: tuple[int, ...] | None = None, ipv6: bool = False,
                 pools: dict[int, str] | None = None):
        self.lab = lab
        self.dir = Path(tempfile.mkdtemp(prefix="tgm-", dir="/tmp"))
        self.prices = prices
        self.public: dict[int, str] = {}
        gw_tables = []
        for i, price in prices.items():
            key = keys.generate()
            keys.write_private(self.dir / f"gw{i}.key", key)
            self.public[i] = keys.b64(keys.public_of(key))
            a = market_gateway(i)
            advertise = (f'[advertise]\nmdns = true\ninterfaces = ["veth-c"]\nlabel = "gw{i}"\n'
                         if mdns else "")
            (self.dir / f"gw{i}.toml").write_text(f"""[node]
private_key_file = "gw{i}.key"
state_dir = "gw{i}"
[daemon]
user = "root"
[link]
listen = "{a['link']}:{PORT}"
[network]
tun = "tgs0"
address = "{(pools or {}).get(i, "100.64.0.1/24")}"
{f'address6 = "{TUNNEL6}"' if ipv6 else ""}
upstream_interface = "veth-up"
[pricing]
default_price = "{price}"
{advertise}{gateway_extra}
""")
            if not mdns and (listed is None or i in listed):
                gw_tables.append(f'[[gateways]]\nendpoint = "{a["link"]}:{PORT}"\npublic_key = "{self.public[i]}"\n'
                                 f'label = "gw{i}"\n')
        cl_key = keys.generate()
        keys.write_private(self.dir / "cl.key", cl_key)
        discovery = '[discovery]\nmdns = true\ninterfaces = ["veth0"]\n' if mdns else ""
        self.client_conf = self.dir / "client.toml"
        self.client_conf.write_text(f"""[node]
private_key_file = "cl.key"
state_dir = "cl"
[daemon]
user = "root"
[network]
tun = "tg0"
routes = {'["0.0.0.0/0", "::/0"]' if ipv6 else '["0.0.0.0/0"]'}
{"".join(gw_tables)}{discovery}{client_extra}
""")

    def tg(self, ns: str, *args, check=True, timeout=30) -> subprocess.CompletedProcess:
        return self.lab.run(ns, *TG, *args, check=check, timeout=timeout)

    def serve(self, i: int) -> None:
        self.tg(f"gw{i}", "serve", "-c", str(self.dir / f"gw{i}.toml"))

    def up(self, wait: bool = True) -> None:
        self.tg("client", "up", "-c", str(self.client_conf), timeout=60)

    def request(self, which: str, cmd: str, **kw):
        from tunnelgate.daemon.control import request
        sock = self.dir / ("cl" if which == "client" else which) / "control.sock"
        return request(sock, cmd, **kw)

    def gateways(self) -> list[dict]:
        return self.request("client", "gateways")

    def by_label(self) -> dict[str, dict]:
        return {g["label"]: g for g in self.gateways()}

    def carrier(self, dest: str = "0.0.0.0/0") -> str | None:
        """The label of the gateway that carries dest now."""
        for g in self.gateways():
            if dest in g["destinations"]:
                return g["label"]
        return None

    def set_price(self, i: int, price: str) -> None:
        self.tg(f"gw{i}", "set", "-c", str(self.dir / f"gw{i}.toml"), f"default_price={price}")

    def pid(self, which: str) -> int:
        return int((self.dir / ("cl" if which == "client" else which) / "tunnelgate.pid").read_text())

    def kill9(self, which: str) -> None:
        os.kill(self.pid(which), signal.SIGKILL)

    def logs(self) -> str:
        out = []
        for which in ["cl", *(f"gw{i}" for i in self.prices)]:
            p = self.dir / which / "tunnelgate.log"
            if p.exists():
                out.append(f"--- {which} log ---\n" + "\n".join(p.read_text().splitlines()[-30:]))
        return "\n".join(out)

    def close(self) -> None:
        confs = [("client", self.client_conf)] + [(f"gw{i}", self.dir / f"gw{i}.toml") for i in self.prices]
        for ns, conf in confs:
            self.tg(ns, "down", "-c", str(conf), check=False)
        for which in ["client", *(f"gw{i}" for i in self.prices)]:
            try:
                os.kill(self.pid(which), signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for(predicate, timeout: float, step: float = 0.1):
    """predicate()'s first true value within timeout, else None."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = predicate()
        if got:
            return got
        time.sleep(step)
    return None


def dump(obj) -> str:
    return json.dumps(obj, indent=1, default=str)
