"""The data path's offload and fallback paths end to end: sha256-checked
transfers both ways through a dual-stack tunnel, over IPv4 and over IPv6, with
TUN TSO/TSO6 + UDP GSO/GRO (default), without UDP GRO, and with no offloads at all.
The receiving kernels verify every TCP checksum (a bad one would stall the
transfer)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tgenv import TunnelEnv
from tunnelgate.daemon.control import request
from tglab.lab import UPSTREAM, UPSTREAM6
from tglab.configs import TUNNEL6

pytestmark = pytest.mark.root


@pytest.mark.parametrize("gw_mode,client_mode", [("1", "1"), ("1", "nochunks"), ("nochunks", "1"),
                                                  ("nogro", "nogro"), ("0", "0")])
def test_transfer_sha256_each_offload_mode(lab, gw_mode, client_mode):
    """TUNNELGATE_OFFLOAD per daemon. "nochunks" on one side also stands for a
    peer of a version without chunk records: the other side must send it
    segments, and still take its chunks if it sends any."""
    files = lab.start_upstream({"20M.bin": 20_000_000, "6M.bin": 6_000_000})
    env = TunnelEnv(lab, routes=("0.0.0.0/0", "::/0"), address6=TUNNEL6)
    try:
        env.serve(env={**os.environ, "TUNNELGATE_OFFLOAD": gw_mode})
        env.up(env={**os.environ, "TUNNELGATE_OFFLOAD": client_mode})
        up_file = env.dir / "upload.bin"
        up_file.write_bytes(bytes(range(256)) * 60_000 + b"tail")
        want = hashlib.sha256(up_file.read_bytes()).hexdigest()

        def transfer(host: str, name: str) -> None:
            got = lab.run(lab.client, "sh", "-c",
                          f"curl -gsS --max-time 60 http://{host}:8080/{name} | sha256sum",
                          timeout=90).stdout.split()[0]
            assert got == files[name], host
            reply = lab.run(lab.client, "curl", "-gsS", "--max-time", "60", "--data-binary", f"@{up_file}",
                            f"http://{host}:8080/upload", timeout=90).stdout
            assert json.loads(reply)["sha256"] == want, host

        transfer(UPSTREAM, "20M.bin")
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
        # what each side says it negotiated
        assert cl["gateway_features"] == (["sized"] if gw_mode == "nochunks" else ["chunks", "sized"])
        assert gw["peers"][0]["chunks"] == both
        # IPv6 takes the same offload paths: TSO6 reads, chunks where both ends take them
        before = {"cl": cl, "gw": gw}
        transfer(f"[{UPSTREAM6}]", "6M.bin")
        cl, gw = env.status("client"), env.status("gw")
        assert cl["address6"] == "fd64:7467::2/64"
        for which, side, mode in (("cl", cl, client_mode), ("gw", gw, gw_mode)):
            chunks6 = side["stats"].get("tx_chunks", 0) - before[which]["stats"].get("tx_chunks", 0)
            assert (chunks6 > 0) == (both and mode != "0"), which
            # segments from a peer without chunks reach the TUN coalesced into GSO frames,
            # IPv6 as IPv4, where the TUN takes them
            if not both and mode != "0":
                rx = side["stats"]["rx_packets"] - before[which]["stats"]["rx_packets"]
                frames = side["tun_stats"]["write_packets"] - before[which]["tun_stats"]["write_packets"]
                assert frames < rx / 2, (which, frames, rx)
            assert side["tun_stats"]["write_dropped"] == 0, which
        # each family is metered under contracts of its own
        contracts = request(env.dir / "gw" / "control.sock", "contracts", all=True)
        destinations = {c["destination"].split("/")[0] for c in contracts}
        assert {UPSTREAM, UPSTREAM6} <= destinations, destinations
    finally:
        print(env.logs())
        env.close()
