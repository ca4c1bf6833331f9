"""The benchmark's machinery works: a wireguard-go tunnel (Debian's package)
in a lab, one short iperf3 through it each way, its JSON parsed; the idle-ping
round with every path up at once; a terminated bench leaves no lab. No speed
asserted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tglab.lab import Lab
from tglab import bench, wggo

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
@pytest.mark.skipif(not os.path.exists(wggo.DEBIAN_BINARY), reason="apt package wireguard-go not installed")
@pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 not installed")
@pytest.mark.parametrize("fam", [bench.IPV4, bench.IPV6], ids=["ipv4", "ipv6"])
def test_wireguard_go_iperf_through_tunnel(tmp_path, fam):
    lab = Lab("tgB" + os.urandom(3).hex())
    try:
        lab.build()
        lab.start_upstream({})
        with wggo.WgTunnel(lab, wggo.DEBIAN_BINARY, log_dir=tmp_path, routes=(fam.net,),
                           ipv6=fam.v == 6) as tunnel:
            cpu0 = tunnel.cpu()
            tx0 = tunnel.tx_bytes()
            res = bench.iperf(lab, 1, 1, dst=fam.dst)
            cpu1 = tunnel.cpu()
            tx1 = tunnel.tx_bytes()
            gw_tx0 = tunnel.tx_bytes("gw")
            down = bench.iperf(lab, 1, 1, dst=fam.dst, reverse=True)
            gw_tx1 = tunnel.tx_bytes("gw")
        assert res["bytes"] > 0 and res["bps"] > 0, res
        # it went through the tunnel (the upstream host answers only masqueraded traffic anyway)
        assert tx1 - tx0 >= res["bytes"], (tx0, tx1, res)
        # the download (iperf3 -R) came back through the gateway's end of the tunnel
        assert down["bytes"] > 0 and gw_tx1 - gw_tx0 >= down["bytes"], (gw_tx0, gw_tx1, down)
        assert set(cpu1) == {"client", "gw"} and all(cpu1[s] >= cpu0[s] for s in cpu1)
    finally:
        lab.destroy()


def _lab_namespaces(prefix: str = "tgB") -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(prefix)}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
@pytest.mark.skipif(not os.path.exists(wggo.DEBIAN_BINARY), reason="apt package wireguard-go not installed")
def test_idle_pings_with_every_path_up_at_once():
    # the bench's idle-ping round: raw, wireguard-go and tunnelgate each up in
    # a lab of its own, all at once, pinging in turn; every lab gone after
    before = _lab_namespaces()
    ups = {"raw": bench.raw_up, "wg-deb": bench.wg_up(wggo.DEBIAN_BINARY), "tg": bench.tg_up()}
    got = bench.idle_pings(ups, rounds=2, count=3)
    assert set(got) == set(ups)
    for key, res in got.items():
        assert len(res["rounds"]) == 2 and all(0 < r < 50 for r in res["rounds"]), (key, res)
    assert _lab_namespaces() == before


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
@pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 not installed")
@pytest.mark.parametrize("script, prefix", [
    (["tglab.bench", "--only", "raw", "--quick"], "tgB"),
    (["tglab.demo", "--dummy", "--no-tui"], "tgdemo"),
], ids=["bench", "demo"])
def test_a_terminated_script_deletes_its_lab(script, prefix):
    # SIGTERM (timeout(1), a CI job ending) unwinds like Ctrl-C: no lab is left
    before = _lab_namespaces(prefix)
    p = subprocess.Popen([sys.executable, "-m", *script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (_lab_namespaces(prefix) - before) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _lab_namespaces(prefix) - before, f"{script[0]} built no lab within 30 s"
        time.sleep(1)
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 128 + signal.SIGTERM
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        left = _lab_namespaces(prefix) - before
        for name in {name.rsplit("-", 1)[0] for name in left}:
            Lab.cleanup_stale(name)             # its owner is gone: not ours to keep
    assert not left, left
