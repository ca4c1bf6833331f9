"""Gateways started by the CLI with `[advertise] mdns = true` announce their signed
adverts on the LAN (the market lab) after dropping root: a browser in the client's
namespace finds all three with their prices, sees a newer advert (higher seq) with the
new price after `tunnelgate set default_price` on one, and refuses and counts a forged
advert from a fourth announcer."""

from __future__ import annotations

import json
import os
import pwd
import queue
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from market_helpers import ANNOUNCE
from tglab.configs import PORT, write_pair
from tglab.lab import REPO_ROOT
from tglab.topology import market_gateway
from tgenv import TG
from tunnelgate.money import parse_price

pytestmark = pytest.mark.root
USER = "tunnelgate"
PRICES = {"gw1": "0.3", "gw2": "0.2", "gw3": "0.4"}
NEW_PRICE = "0.05"

# one line per accepted advert, and the book's counts after every advert offered (refused
# ones too, so the test can wait for a refusal instead of guessing how long it takes)
BROWSE = r"""
import asyncio, json, sys, time
from tunnelgate.daemon.discovery import Browser
from tunnelgate.protocol.advert import AdvertBook
book = AdvertBook()
def on_advert(raw, src):
    c = book.offer(raw, src, time.time())
    if c is not None:
        a = c.advert
        print(json.dumps({"label": a.label, "seq": a.seq, "price": a.price, "ep": list(a.endpoints),
                          "more": a.more}), flush=True)
    print(json.dumps({"counts": book.counts}), flush=True)
async def main():
    b = Browser(["veth0"], on_advert)
    await b.start()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await b.close()
    print(json.dumps({"counts": book.counts}), flush=True)
asyncio.run(main())
"""


class Lines:
    """JSON lines of a process's stdout, read on a thread (a pipe's buffered reader and
    select() do not mix)."""

    def __init__(self, proc):
        self.queue: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        self.thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.queue.put(json.loads(line))
        self.queue.put(None)

    def until(self, done, limit: float) -> list[dict]:
        """Lines until done(lines) or limit seconds."""
        got: list[dict] = []
        end = time.monotonic() + limit
        while not done(got) and time.monotonic() < end:
            try:
                item = self.queue.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                break
            got.append(item)
            self.seen.append(item)
        return got


@pytest.fixture
def gateways(market_lab):
    try:
        pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"no user {USER!r}: run scripts/setup")
    lab = market_lab
    root = Path(tempfile.mkdtemp(prefix="tg-adverts-", dir="/tmp"))
    root.chmod(0o711)
    confs = {}
    for i in (1, 2, 3):
        name = f"gw{i}"
        d = root / name
        d.mkdir()
        d.chmod(0o711)
        extra = (f'[pricing]\ndefault_price = "{PRICES[name]}"\nfloor_price = "0.01"\n'
                 f'[advertise]\nmdns = true\ninterfaces = ["veth-c"]\nlabel = "{name}"\n')
        pair = write_pair(d, gateway_extra=extra, listen=market_gateway(i)["link"], user=USER)
        confs[name] = pair.gateway
    yield lab, confs
    for name, conf in confs.items():
        lab.run(name, *TG, "down", "-c", str(conf), check=False, timeout=30)
        pid = conf.parent / "gw" / "tunnelgate.pid"
        if pid.exists():
            try:
                os.kill(int(pid.read_text()), 9)
            except (ProcessLookupError, ValueError):
                pass
        log = conf.parent / "gw" / "tunnelgate.log"
        if log.exists():
            print(f"--- {name} log ---\n" + "\n".join(log.read_text().splitlines()[-20:]))


def test_gateways_announce_adverts_and_a_price_change_after_dropping_root(gateways):
    lab, confs = gateways
    for name, conf in confs.items():
        lab.run(name, *TG, "serve", "-c", str(conf), timeout=60)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    browser = lab.popen("client", sys.executable, "-c", BROWSE, env=env, stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, text=True)
    lines = Lines(browser)
    forger_key = os.urandom(32)
    forger = lab.popen("gw3", sys.executable, "-c", ANNOUNCE, forger_key.hex(), "forge", "forged",
                       "198.18.1.13:51820", "60", "7000", env=env, stdout=subprocess.PIPE, text=True)
    try:
        # every gateway runs unprivileged and says it announces
        statuses = {}
        for name, conf in confs.items():
            st = json.loads(lab.run(name, *TG, "status", "-c", str(conf), "--json").stdout)
            assert st["privileges"]["user"] == USER and st["privileges"]["uid"] != 0, st["privileges"]
            assert st["advert"]["announcing"] and st["advert"]["interfaces"] == ["veth-c"], st["advert"]
            statuses[name] = st["advert"]

        def labels(lines):
            return {x["label"] for x in lines if "label" in x}
        first = lines.until(lambda got: labels(got) >= set(confs), 30)
        found = {x["label"]: x for x in first if "label" in x}
        assert set(found) >= set(confs), first
        assert "forged" not in found
        for i, name in enumerate(sorted(confs), 1):
            assert found[name]["price"] == parse_price(PRICES[name]), found[name]
            assert found[name]["ep"] == [f"{market_gateway(i)['link']}:{PORT}"]
            assert found[name]["seq"] == statuses[name]["seq"] and not found[name]["more"]

        # a live price change on gw2: a newer advert with the new price, on a daemon that
        # dropped root after set-up
        lab.run("gw2", *TG, "set", "-c", str(confs["gw2"]), f"default_price={NEW_PRICE}")
        advert = json.loads(lab.run("gw2", *TG, "advert", "-c", str(confs["gw2"]), "--json").stdout)
        assert advert["price"] == parse_price(NEW_PRICE) and advert["seq"] > found["gw2"]["seq"]
        assert advert["announced"]["mdns"] and not advert["more"]

        def changed(got):
            return any(x.get("label") == "gw2" and x["price"] == parse_price(NEW_PRICE) for x in got)
        later = lines.until(changed, 30)
        new = [x for x in later if x.get("label") == "gw2"]
        assert new and new[-1]["price"] == parse_price(NEW_PRICE), later
        assert new[-1]["seq"] == advert["seq"] > found["gw2"]["seq"]
        # the forged advert (price changed after signing) is refused and counted; under load
        # the forger's start-up and zeroconf's probing can take seconds, so wait for it
        assert select.select([forger.stdout], [], [], 30)[0], "the forger did not start in 30 s"
        assert forger.stdout.readline().strip() == "up"

        def refused(got):
            return any(x.get("counts", {}).get("bad_signature", 0) >= 1 for x in lines.seen + got)
        lines.until(refused, 30)
    finally:
        browser.stdin.close()
        browser.wait(20)
        forger.terminate()
        forger.wait(5)
    counts = [x["counts"] for x in lines.seen if "counts" in x]
    assert counts and counts[-1].get("bad_signature", 0) >= 1, counts[-1:]
    assert counts[-1]["accepted"] >= 4, counts[-1]
    assert not any(x.get("label") == "forged" for x in lines.seen)
