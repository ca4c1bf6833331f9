"""The namespace lab itself and its upstream HTTP server."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess

import pytest

from tglab.lab import CLIENT_LINK, GW_LINK, HTTP_PORT, MARK_DIR, UPSTREAM, Lab, LabError
from tglab.topology import Link, Node, Port, Route, Topology



def new_prefix() -> str:
    return "tgt" + secrets.token_hex(3)[:5]

pytestmark = pytest.mark.root


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def ping(lab, ns, dst) -> bool:
    return lab.run(ns, "ping", "-c1", "-W1", dst, check=False, timeout=10).returncode == 0


def test_lab_topology_and_destroy():
    root_links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    lab = Lab(new_prefix())
    try:
        lab.build()
        assert {lab.client, lab.gw, lab.up} <= netns_names()
        assert ping(lab, lab.client, GW_LINK)
        assert ping(lab, lab.gw, CLIENT_LINK)
        assert ping(lab, lab.gw, UPSTREAM)
        # no tunnel: the client cannot reach upstream (gw does not forward, up has no route back)
        assert not ping(lab, lab.client, UPSTREAM)
        assert lab.run(lab.gw, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
        up_routes = lab.run(lab.up, "ip", "route").stdout
        assert "198.18.1." not in up_routes and "100.64." not in up_routes and "default" not in up_routes
        assert lab.run(lab.client, "ip", "route", "show", "default").stdout.startswith(f"default via {GW_LINK}")
        # nothing appeared in the root namespace
        assert subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout == root_links
        proc = lab.popen(lab.up, "sleep", "60")
    finally:
        lab.destroy()
    assert proc.poll() is not None                    # started processes are killed
    assert not {lab.client, lab.gw, lab.up} & netns_names()
    assert not (MARK_DIR / f"{lab.prefix}.json").exists()
    lab.destroy()                                     # idempotent, never raises


def test_lab_builds_any_topology_it_is_given():
    # two nodes on one link, IPv4 only, a route to a prefix beyond: nothing of the
    # three-namespace shape is left in Lab (roles of the default topology, so that
    # cleanup_stale would know them if this run died)
    two = Topology(nodes=(Node("client", routes=(Route("198.18.9.0/24", "198.18.7.1"),)), Node("gw")),
                   links=(Link((Port("client", "c0", "198.18.7.2"), Port("gw", "g0", "198.18.7.1"))),))
    lab = Lab(new_prefix(), two)
    try:
        lab.build()
        assert lab.namespaces == [lab.client, lab.gw] and {lab.client, lab.gw} <= netns_names()
        assert ping(lab, lab.client, "198.18.7.1")
        assert "198.18.9.0/24 via 198.18.7.1 dev c0" in lab.run(lab.client, "ip", "route").stdout
        assert "inet6" not in lab.run(lab.gw, "ip", "-6", "addr", "show", "g0", "scope", "global").stdout
        with pytest.raises(AttributeError):
            lab.up
        with pytest.raises(KeyError, match="no optional node 'stranger'"):
            lab.add("stranger")
    finally:
        lab.destroy()
    assert not {lab.client, lab.gw} & netns_names()


def test_lab_context_manager_destroys_on_error():
    prefix = new_prefix()
    with pytest.raises(RuntimeError):
        with Lab(prefix) as lab:
            lab.build()
            raise RuntimeError("boom")
    assert not any(n.startswith(prefix + "-") for n in netns_names())


def test_run_errors_show_stderr(lab):
    with pytest.raises(subprocess.CalledProcessError) as e:
        lab.run("gw", "ip", "route", "get", "not-an-address")
    assert "ip" in str(e.value) and "stderr" in str(e.value)
    with pytest.raises(LabError):
        lab.run("nowhere", "true")


def test_cleanup_stale_only_dead_owners():
    dead = Lab(new_prefix())
    live = Lab(new_prefix())
    try:
        dead.build()
        live.build()
        # pretend `dead` was made by a process that has exited
        p = subprocess.Popen(["true"])
        p.wait()
        marker = MARK_DIR / f"{dead.prefix}.json"
        info = json.loads(marker.read_text())
        info.update(pid=p.pid, starttime="0")
        marker.write_text(json.dumps(info))
        assert sorted(Lab.cleanup_stale(dead.prefix)) == sorted([dead.client, dead.gw, dead.up])
        assert Lab.cleanup_stale(live.prefix) == []       # owner (this process) alive
        names = netns_names()
        assert not {dead.client, dead.gw, dead.up} & names
        assert {live.client, live.gw, live.up} <= names
    finally:
        dead.destroy()
        live.destroy()


def test_httpd_get_and_post(lab, tmp_path):
    sums = lab.start_upstream({"1M.bin": 1_000_000, "empty.bin": 0})
    assert sums["empty.bin"] == hashlib.sha256(b"").hexdigest()
    got = tmp_path / "got.bin"
    lab.run(lab.gw, "curl", "-sSf", "-o", got, f"http://{UPSTREAM}:{HTTP_PORT}/1M.bin")
    data = got.read_bytes()
    assert len(data) == 1_000_000 and hashlib.sha256(data).hexdigest() == sums["1M.bin"]

    body = os.urandom(5_000_000)
    up = tmp_path / "up.bin"
    up.write_bytes(body)
    for method in ("POST", "PUT"):
        r = lab.run(lab.gw, "curl", "-sSf", "-X", method, "-H", "Content-Type: application/octet-stream",
                    "--data-binary", f"@{up}", f"http://{UPSTREAM}:{HTTP_PORT}/upload")
        assert json.loads(r.stdout) == {"bytes": 5_000_000, "sha256": hashlib.sha256(body).hexdigest()}

    r = lab.run(lab.gw, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                f"http://{UPSTREAM}:{HTTP_PORT}/../etc/passwd", check=False)
    assert r.stdout == "404"
    # iperf3 is listening too
    assert f"{UPSTREAM}:5201" in lab.run(lab.up, "ss", "-Hltn").stdout
    # not reachable from the client without a tunnel
    r = lab.run(lab.client, "curl", "-s", "-m", "2", f"http://{UPSTREAM}:{HTTP_PORT}/1M.bin",
                "-o", "/dev/null", check=False)
    assert r.returncode != 0


def test_scripts_lab_cli():
    prefix = new_prefix()
    script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "lab")
    try:
        r = subprocess.run([script, "up", prefix], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert {f"{prefix}-client", f"{prefix}-gw", f"{prefix}-up"} <= netns_names()
        assert Lab.cleanup_stale(prefix) == []             # a CLI lab is never "stale"
        r = subprocess.run([script, "exec", prefix, "client", "ping", "-c1", "-W1", GW_LINK],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        r = subprocess.run([script, "down", prefix], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not any(n.startswith(prefix + "-") for n in netns_names())
