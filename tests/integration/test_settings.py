"""Live settings through the control socket (`tunnelgate set`), on real daemons."""

import time

import pytest

from tgenv import TunnelEnv, ping, wait_until

pytestmark = pytest.mark.root


@pytest.fixture
def env(lab):
    lab.start_upstream({})
    e = TunnelEnv(lab, gateway_extra='[pricing]\ndefault_price = "0.5"\nfloor_price = "0.2"\n'
                                     'no_deal_backoff_s = 2\n',
                  client_extra='[policy]\nmax_price = "1"\n')
    yield e
    print(e.logs())
    e.close()


def kinds(env, which):
    return [ev["kind"] for ev in env.events(which)]


def test_gateway_address_is_free_and_pause_resume_buying(lab, env):
    env.serve()
    env.up()
    # the gateway's own tunnel address needs no contract
    assert ping(lab, lab.client, dst="100.64.0.1", count=2).returncode == 0
    assert env.status("client")["market"]["contracts"] == []

    out = env.tg(lab.client, "set", "-c", str(env.client_conf), "pause_buying=true").stdout
    assert "pause_buying = True" in out
    assert ping(lab, lab.client, count=2).returncode != 0          # nothing bought while paused
    st = env.status("client")
    assert st["settings"]["pause_buying"] is True and st["market"]["contracts"] == []
    assert "declined" in kinds(env, "client")

    env.tg(lab.client, "set", "-c", str(env.client_conf), "pause_buying=false")
    assert wait_until(lambda: ping(lab, lab.client, count=1).returncode == 0, timeout=15) is not None
    [c] = env.status("client")["market"]["contracts"]
    assert c["state"] in ("GRACE", "PAID") and c["price"] == 500_000


def test_live_prices_and_max_price(lab, env):
    env.serve()
    env.up()
    # the client now accepts at most 0.3: it counters, the gateway (floor 0.2) meets it
    env.tg(lab.client, "set", "-c", str(env.client_conf), "max_price=0.3")
    assert ping(lab, lab.client, count=2).returncode == 0
    [c] = env.status("client")["market"]["contracts"]
    assert c["price"] == 300_000
    # the gateway lowers its list price: the next contract (another destination) sells at 0.25
    out = env.tg(lab.gw, "set", "-c", str(env.gw_conf), "default_price=0.25").stdout
    assert "default_price = 0.25 msat/KB" in out
    assert env.status("gw")["pricing"]["default_price"] == "0.25 msat/KB"
    r = env.tg(lab.gw, "set", "-c", str(env.gw_conf), "floor_price=0.3", check=False)
    assert r.returncode == 1 and "floor_price would be above default_price" in r.stderr
    r = env.tg(lab.client, "set", "-c", str(env.client_conf), "max_price=0.1234567", check=False)
    assert r.returncode == 1 and "max_price" in r.stderr and "decimals" in r.stderr
    r = env.tg(lab.client, "set", "-c", str(env.client_conf), "colour=blue", check=False)
    assert r.returncode == 1 and "unknown setting 'colour'" in r.stderr


def test_events_stream_follows_live_events(lab, env):
    import os
    import select
    import subprocess
    import sys
    env.serve()
    env.up()
    follower = subprocess.Popen(["ip", "netns", "exec", lab.client, sys.executable, "-m", "tunnelgate.cli",
                                 "events", "-c", str(env.client_conf), "--follow"],
                                stdout=subprocess.PIPE)
    try:
        time.sleep(1.0)
        assert ping(lab, lab.client, count=2).returncode == 0     # a contract: accepted, paid
        env.tg(lab.client, "set", "-c", str(env.client_conf), "max_price=0.9")
        text = ""
        deadline = time.monotonic() + 10
        fd = follower.stdout.fileno()
        while time.monotonic() < deadline and "max_price = 0.9" not in text:
            if select.select([fd], [], [], 0.5)[0]:
                text += os.read(fd, 65536).decode()
        assert "accepted" in text and "paid" in text and "setting" in text, text
    finally:
        follower.kill()
    listed = env.tg(lab.client, "events", "-c", str(env.client_conf)).stdout
    assert "accepted" in listed and "198.18.2.2/32" in listed


def test_peers_command(lab, env):
    import json
    env.serve()
    env.up()
    assert ping(lab, lab.client, count=1).returncode == 0
    [p] = json.loads(env.tg(lab.gw, "peers", "-c", str(env.gw_conf), "--json").stdout)
    assert p["address"] == "100.64.0.2" and p["public_key"] == env.client_public
    assert p["grace"] is True and p["endpoint"].startswith("198.18.1.2:")
    text = env.tg(lab.client, "peers", "-c", str(env.client_conf)).stdout
    assert env.gw_public in text and "198.18.1.1:51900" in text


def test_quote_asks_terms_without_buying(lab, env):
    import json
    env.serve()
    env.up()
    q = json.loads(env.tg(lab.client, "quote", "-c", str(env.client_conf), "198.18.2.2", "--json").stdout)
    assert q["destination"] == "198.18.2.2/32" and q["price"] == 500_000 and q["acceptable"] is True
    assert q["cost_msat"] == 5000 and q["methods"] == ["dummy"] and not q["reason"]
    assert env.status("client")["market"]["contracts"] == []      # nothing bought
    assert env.status("gw")["market"]["contracts"] == []
    free = env.tg(lab.client, "quote", "-c", str(env.client_conf), "100.64.0.1").stdout
    assert "free destination" in free
    env.tg(lab.client, "set", "-c", str(env.client_conf), "max_price=0.3")
    text = env.tg(lab.client, "quote", "-c", str(env.client_conf), "198.18.2.2").stdout
    assert "0.5 msat/KB" in text and "would counter-offer" in text
    r = env.tg(lab.client, "quote", "-c", str(env.client_conf), "not-an-address", check=False)
    assert r.returncode == 1 and "expected an IP address" in r.stderr
