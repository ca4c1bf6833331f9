"""Least privilege (issue 20, item 4) in real namespaces with the real CLI: after set-up
both daemons run as the unprivileged [daemon] user with CAP_NET_ADMIN only, traffic and a
paid contract still work, `tunnelgate status` (root) still reaches them, and a stop still
undoes their routes, nft tables and forwarding."""

from __future__ import annotations

import os
import pwd
import stat

import pytest

from tgenv import TunnelEnv, ping, wait_until
from tunnelgate.daemon.privilege import CAP_NUMBERS

pytestmark = pytest.mark.root
USER = "tunnelgate"


def proc_status(pid: int | str) -> dict[str, list[str]]:
    out = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        out[key] = value.split()
    return out


@pytest.fixture
def user():
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"no user {USER!r}: run scripts/setup")


def test_daemons_run_unprivileged_after_setup_and_still_serve(lab, user):
    env = TunnelEnv(lab, user=USER)
    try:
        env.serve()
        env.up()
        assert wait_until(lambda: ping(lab, lab.client, count=1).returncode == 0, 30) is not None, env.logs()
        assert wait_until(lambda: any(c["state"] == "PAID" for c in env.status("gw")["market"]["contracts"]),
                          20) is not None, env.logs()
        net_admin = 1 << CAP_NUMBERS["CAP_NET_ADMIN"]
        for which, sub in (("gw", "gw"), ("client", "cl")):
            st = proc_status(env.pid(which))
            assert [int(x) for x in st["Uid"]] == [user.pw_uid] * 4, (which, st["Uid"])
            assert [int(x) for x in st["Gid"]] == [user.pw_gid] * 4, (which, st["Gid"])
            for field in ("CapEff", "CapPrm", "CapAmb"):
                assert int(st[field][0], 16) == net_admin, (which, field, st[field])
            # every thread (the data path's, the network executor's) left root too
            for task in os.listdir(f"/proc/{env.pid(which)}/task"):
                ts = proc_status(f"{env.pid(which)}/task/{task}")
                assert int(ts["Uid"][1]) == user.pw_uid and int(ts["CapEff"][0], 16) & ~net_admin == 0
            # the control socket: 0600 and the daemon's user's; root's CLI still reaches it
            sock = os.stat(env.dir / sub / "control.sock")
            assert stat.S_IMODE(sock.st_mode) == 0o600 and sock.st_uid == user.pw_uid
            status = env.status(which)
            assert status["privileges"] == {"user": USER, "uid": user.pw_uid, "capabilities": ["CAP_NET_ADMIN"]}
            for name in ("tunnelgate.db", "tunnelgate.log"):
                assert os.stat(env.dir / sub / name).st_uid == user.pw_uid
        text = env.tg(lab.gw, "status", "-c", str(env.gw_conf)).stdout
        assert f"runs as   {USER} (uid {user.pw_uid}), CAP_NET_ADMIN" in text
        # a stop as the unprivileged user still undoes what set-up did
        env.down_all()
        assert "tunnelgate" not in lab.run(lab.client, "nft", "list", "tables").stdout
        assert "tunnelgate" not in lab.run(lab.gw, "nft", "list", "tables").stdout
        assert lab.run(lab.gw, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
        assert "tg0" not in lab.run(lab.client, "ip", "-br", "link").stdout
    finally:
        env.close()
