"""A client sending TCP segments with a data offset below 5 to the gateway's
own tunnel address (free to reach, no contract needed) through the real
tunnel: the gateway used to coalesce them and die in offload.gso_frame
(IndexError, "data path thread udp-to-tun failed; stopping"), for every
client. Now they are forwarded or dropped as they are, the gateway keeps
running and the tunnel keeps carrying traffic."""

from __future__ import annotations

import os

import pytest

from tgenv import TunnelEnv, ping, wait_until

pytestmark = pytest.mark.root

GW_TUNNEL = "100.64.0.1"

# in-order segments of one flow whose TCP header claims doff*4 bytes: sequence
# numbers advance by what a parser trusting that offset takes as payload, so
# they look mergeable; sent in bursts so one receive batch holds several
RAW_SENDER = f"""
import socket, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
payload = b"x" * 100
for rnd in range(4):
    for doff in (0, 1, 2, 3, 4):
        seq = 1000 + rnd * 100000
        step = 20 + len(payload) - doff * 4
        for i in range(24):
            hdr = struct.pack("!HHIIBBHHH", 40000, 5201, seq + i * step, 7, doff << 4, 0x10, 1000, 0, 0)
            s.sendto(hdr + payload, ("{GW_TUNNEL}", 0))
    time.sleep(0.1)
print("sent")
"""


def test_tcp_data_offset_below_5_does_not_stop_the_gateway(lab):
    lab.start_upstream({})
    env = TunnelEnv(lab)
    try:
        env.serve()
        env.up()
        r = ping(lab, lab.client)
        assert r.returncode == 0, r.stdout + r.stderr
        gw_pid = env.pid("gw")
        before = env.status("gw")["stats"].get("rx_packets", 0)
        out = lab.run(lab.client, "python3", "-c", RAW_SENDER, timeout=60).stdout
        assert "sent" in out
        # the segments went through the tunnel and reached the gateway's data path
        assert wait_until(lambda: env.status("gw")["stats"].get("rx_packets", 0) >= before + 100, 20), env.logs()
        r = ping(lab, lab.client, count=5)
        assert r.returncode == 0, r.stdout + r.stderr + env.logs()
        os.kill(gw_pid, 0)                                  # the same gateway process, still there
        st = env.status("gw")
        assert st["stats"].get("thread_restarts", 0) == 0, env.logs()   # nothing even failed
    finally:
        env.close()
