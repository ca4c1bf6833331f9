"""The data path's offload and fallback paths end to end: sha256-checked
transfers both ways through the tunnel with TUN TSO + UDP GSO/GRO (default),
without UDP GRO, and with no offloads at all. IPv4; the receiving kernels
verify every TCP checksum (a bad one would stall the transfer)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tgenv import TunnelEnv
from tunnelgate.lab import UPSTREAM

pytestmark = pytest.mark.root


@pytest.mark.parametrize("gw_mode,client_mode", [("1", "1"), ("1", "nochunks"), ("nochunks", "1"),
                                                  ("nogro", "nogro"), ("0", "0")])
def test_transfer_sha256_each_offload_mode(lab, gw_mode, client_mode):
    """TUNNELGATE_OFFLOAD per daemon. "nochunks" on one side also stands for a
    peer of a version without chunk records: the other side must send it
    segments, and still take its chunks if it sends any."""
    files = lab.start_upstream({"20M.bin": 20_000_000})
    env = TunnelEnv(lab)
    try:
        env.serve(env={**os.environ, "TUNNELGATE_OFFLOAD": gw_mode})
        env.up(env={**os.environ, "TUNNELGATE_OFFLOAD": client_mode})
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
        assert (cl["stats"]["tx_packets"] > 2 * reads) == (client_mode != "0")
        assert gw["stats"]["rx_bytes"] > 15_000_000 and gw["stats"]["tx_bytes"] > 20_000_000
        # chunk records only where both ends take them, and then for most of the bytes
        both = "nochunks" not in (gw_mode, client_mode)
        for side, mode in ((cl, client_mode), (gw, gw_mode)):
            chunks = side["stats"].get("tx_chunks", 0)
            if both and mode != "0":
                assert chunks > side["stats"]["tx_packets"] / 2
            else:
                assert chunks == 0
        assert gw["stats"].get("drop_bad_chunk", 0) == 0 and cl["stats"].get("drop_bad_chunk", 0) == 0
    finally:
        print(env.logs())
        env.close()
