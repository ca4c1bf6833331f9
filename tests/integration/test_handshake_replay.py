"""A captured handshake initiation replayed after the gateway restarted (`down` then
`serve`, and `kill -9` then `serve`) gets no answer: the latest accepted INIT timestamp
per peer is in the gateway's database (issue 17, item 5)."""

from __future__ import annotations

import sqlite3

import pytest

from datagram_capture import capture_datagrams
from tgenv import PORT, ping
from tglab.lab import GW_LINK
from tunnelgate.wire import INIT

pytestmark = pytest.mark.root

WAIT_S = 3.0     # generous: the machine is loaded; a RESP comes back in milliseconds


def capture_init(lab, env) -> bytes:
    """The client's first datagram to the gateway while `up` runs: its INIT."""
    got = capture_datagrams(lab, lab.client, "veth0", 1, env.up)
    inits = [d for d in got if d[:1] == bytes([INIT])]
    assert inits, f"no INIT captured: {[d[:1] for d in got]}"
    return inits[0]


def replay(lab, datagram: bytes) -> bool:
    """Send datagram to the gateway from the client's namespace (a port of its own);
    True if anything came back within WAIT_S."""
    r = lab.run(lab.client, "python3", "-c",
                "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                f"s.settimeout({WAIT_S}); s.sendto(bytes.fromhex(sys.argv[1]), ('{GW_LINK}', {PORT}))\n"
                "try:\n s.recvfrom(2048); print('reply')\nexcept socket.timeout:\n print('none')",
                datagram.hex(), timeout=WAIT_S + 20)
    return r.stdout.strip() == "reply"


def stale(env) -> int:
    return env.status("gw")["session_stats"].get("stale_handshake", 0)


def test_replayed_init_is_not_answered_after_a_gateway_restart(lab, env):
    env.serve()
    first = capture_init(lab, env)
    assert ping(lab, lab.client, dst="100.64.0.1", count=1).returncode == 0
    env.tg(lab.client, "down", "-c", str(env.client_conf))
    assert not replay(lab, first) and stale(env) == 1       # same run: rejected from memory

    env.tg(lab.gw, "down", "-c", str(env.gw_conf))
    env.serve()
    assert not replay(lab, first), "a restarted gateway (down, serve) answered a replayed INIT\n" + env.logs()
    assert stale(env) == 1

    # a newer INIT, accepted, then the gateway killed right away: still on disk
    second = capture_init(lab, env)
    env.tg(lab.client, "down", "-c", str(env.client_conf))
    env.kill9("gw")
    env.serve()
    for dg in (second, first):
        assert not replay(lab, dg), "a restarted gateway (kill -9, serve) answered a replayed INIT\n" + env.logs()
    assert stale(env) == 2

    # the real client, with a newer timestamp, still gets in
    env.up()
    assert ping(lab, lab.client, dst="100.64.0.1", count=1).returncode == 0
    assert stale(env) == 2

    # the control: with the persisted timestamps wiped, the same replay is answered, so
    # the silence above is the gateway refusing, not the harness missing a reply
    env.down_all()
    db = sqlite3.connect(env.dir / "gw" / "tunnelgate.db")
    db.execute("UPDATE peers SET handshake_ts = NULL")
    db.commit()
    db.close()
    env.serve()
    assert replay(lab, second)
