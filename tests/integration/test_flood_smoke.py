"""The flood benchmark's machinery (tglab/flood.py) works on tunnelgate: the
initiation is captured as the tunnel comes up, each flood mode runs bounded,
a download through the tunnel stays intact during each, and nothing comes
back to the attacker's address. No speed asserted."""

from __future__ import annotations

import os
import shutil

import pytest

from tglab import bench, flood
from tglab.daemons import TG_PORT
from tglab.lab import UPSTREAM, Lab

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
@pytest.mark.skipif(shutil.which("iperf3") is None or shutil.which("tcpdump") is None,
                    reason="iperf3 or tcpdump not installed (scripts/setup)")
def test_short_floods_leave_the_transfer_intact_and_answer_nothing(tmp_path):
    lab = Lab("tgB" + os.urandom(3).hex())
    try:
        lab.build()
        sums = lab.start_upstream({"8M.bin": 8_000_000})
        with flood.flood_up(bench.tg_up(), TG_PORT)(lab, tmp_path, bench.IPV4) as info:
            assert info["init"][:4] == b"\x01\0\0\0"
            for mode in flood.MODES[1:]:
                f = flood.start_flood(lab, info["stranger"], mode, info["port"], 3, info["init"])
                got = lab.run(lab.client, "sh", "-c",
                              f"curl -sS --max-time 60 http://{UPSTREAM}:8080/8M.bin | sha256sum",
                              timeout=90).stdout.split()[0]
                out, err = f.communicate(timeout=30)
                assert f.returncode == 0 and int(out) > 0, err
                assert got == sums["8M.bin"], mode
            assert flood.back(lab, info["stranger"]) == 0
            # one turn as `scripts/bench --flood` takes it
            r = flood.one_turn(bench.PathUp(lab, info, tmp_path), "garbage", 2, 1, bench.iperf)
            assert r["back"] == 0 and r["up_bps"] > 0 and r["down_bps"] > 0 and r["sent"] > 0
            assert r["hs_cpu_s"] is not None        # the handshake worker's thread is found by name
    finally:
        lab.destroy()
