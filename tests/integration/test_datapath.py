"""The data path's offload and fallback paths end to end: sha256-checked
transfers both ways through the tunnel with TUN TSO + UDP GSO/GRO (default),
without UDP GRO, and with no offloads at all. IPv4; the receiving kernels
verify every TCP checksum (a bad one would stall the transfer)."""

from __future__ import annotations

import hashlib
import json

import pytest

from tgenv import TunnelEnv
from tunnelgate.lab import UPSTREAM

pytestmark = pytest.mark.root


@pytest.mark.parametrize("mode", ["1", "nogro", "0"])
def test_transfer_sha256_each_offload_mode(lab, monkeypatch, mode):
    monkeypatch.setenv("TUNNELGATE_OFFLOAD", mode)   # inherited by the daemons
    files = lab.start_upstream({"20M.bin": 20_000_000})
    env = TunnelEnv(lab)
    try:
        env.serve()
        env.up()
        got = lab.run(lab.client, "sh", "-c",
                      f"curl -sS --max-time 60 http://{UPSTREAM}:8080/20M.bin | sha256sum",
                      timeout=90).stdout.split()[0]
        assert got == files["20M.bin"]
        up_file = env.dir / "upload.bin"
        up_file.write_bytes(bytes(range(256)) * 60_000 + b"tail")
        want = hashlib.sha256(up_file.read_bytes()).hexdigest()
        reply = lab.run(lab.client, "curl", "-sS", "--max-time", "60", "--data-binary", f"@{up_file}",
                        f"http://{UPSTREAM}:8080/upload", timeout=90).stdout
        assert json.loads(reply)["sha256"] == want
        gw, cl = env.status("gw"), env.status("client")
        # TSO reads on the client are bursts, several packets per read, only with offloads
        reads = cl["tun_stats"]["read_packets"]
        assert (cl["stats"]["tx_packets"] > 2 * reads) == (mode != "0")
        assert gw["stats"]["rx_bytes"] > 15_000_000 and gw["stats"]["tx_bytes"] > 20_000_000
    finally:
        print(env.logs())
        env.close()
