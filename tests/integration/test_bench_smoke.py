"""The benchmark's machinery works: a wireguard-go tunnel (Debian's package)
in a lab, one short iperf3 through it each way, its JSON parsed. No speed asserted."""

from __future__ import annotations

import os
import shutil

import pytest

from tunnelgate.lab import Lab
from tunnelgate.lab import bench, wggo

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
