"""Datagrams captured on the wire in a lab namespace: capture_datagrams runs tcpdump on an
interface for the UDP datagrams to the gateway port (tgenv.PORT) while an action runs and
returns their payloads, parsed from the pcap here. Used by tests/integration: test_tunnel
(replayed and tampered datagrams) and test_handshake_replay (a captured INIT replayed)."""

from __future__ import annotations

import struct
import time

from tgenv import PORT


def capture_datagrams(lab, ns, iface, count, action):
    """UDP payloads to the gateway port seen on iface while action() runs (tcpdump, pcap parsed here)."""
    pcap = f"/tmp/{lab.prefix}-cap.pcap"
    dump = lab.popen(ns, "tcpdump", "-i", iface, "-U", "-n", "-c", str(count), "-w", pcap,
                     f"udp and dst port {PORT}")
    time.sleep(1.0)
    action()
    try:
        dump.wait(10)
    except Exception:
        dump.kill()
    data = open(pcap, "rb").read()
    out, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        frame = data[off + 16: off + 16 + incl]
        off += 16 + incl
        ihl = (frame[14] & 0x0F) * 4
        out.append(frame[14 + ihl + 8:])
    return out
