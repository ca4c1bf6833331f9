"""A relay's config: [upstream] holds a client config, [pricing] margin and fee."""

from __future__ import annotations

import pytest

from tunnelgate import config, money

KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
BASE = """[node]
private_key_file = "r.key"
state_dir = "r"
[link]
listen = "198.18.1.1:51900"
[network]
tun = "tgs0"
address = "100.64.1.1/24"
"""
UPSTREAM = f"""[upstream.gateway]
endpoint = "198.18.11.2:51900"
public_key = "{KEY}"
[upstream.network]
tun = "tgu0"
routes = ["0.0.0.0/0"]
[upstream.policy]
max_price = "5"
"""


def load(tmp_path, text):
    p = tmp_path / "relay.toml"
    p.write_text(text)
    return config.load(p)


def test_a_relay_reads_its_upstream_as_a_client_config(tmp_path):
    cfg = load(tmp_path, BASE + '[pricing]\nmargin = "0.3"\nfee = "0.01"\ndefault_price = "2"\n' + UPSTREAM)
    assert cfg.role == "gateway" and cfg.upstream is not None
    assert cfg.margin == "0.3" and cfg.fee == money.parse_price("0.01")
    assert cfg.pricing.default_price == money.parse_price("2")
    up = cfg.upstream
    assert up.role == "client" and up.tun == "tgu0" and up.endpoint == ("198.18.11.2", 51900)
    assert up.policy.max_price == money.parse_price("5")
    # its traffic leaves through the upstream TUN; its state beside the relay's
    assert cfg.upstream_interface == "tgu0"
    assert up.node.state_dir == cfg.node.state_dir / "upstream"
    assert up.node.private_key_file == cfg.node.private_key_file
    # a relay has no kill switch on its upstream, even with a full-tunnel route
    assert up.kill_switch is False


def test_margin_defaults_for_a_relay_and_is_refused_without_upstream(tmp_path):
    assert load(tmp_path, BASE + UPSTREAM).margin == "0.25"
    with pytest.raises(config.ConfigError, match=r"pricing\.margin.*add an \[upstream\] table"):
        load(tmp_path, BASE + 'upstream_interface = "eth0"\n[pricing]\nmargin = "0.25"\n')


@pytest.mark.parametrize("extra, where, what", [
    ('[pricing]\nmargin = 0.25\n', "pricing.margin", "floats are not exact"),
    ('[pricing]\nmargin = "a lot"\n', "pricing.margin", "decimal string"),
    ('[upstream.node]\nstate_dir = "x"\n', "upstream.node", "relay's own"),
    ('[upstream.network.x]\n', "upstream.network.x", "unknown key"),
])
def test_bad_relay_keys_name_the_key(tmp_path, extra, where, what):
    with pytest.raises(config.ConfigError) as e:
        load(tmp_path, BASE + extra + UPSTREAM)
    assert f"'{where}'" in str(e.value) and what in str(e.value)


def test_the_upstream_tun_differs_and_has_no_kill_switch(tmp_path):
    with pytest.raises(config.ConfigError, match=r"upstream\.network\.tun.*other than"):
        load(tmp_path, BASE + UPSTREAM.replace('tun = "tgu0"', 'tun = "tgs0"'))
    with pytest.raises(config.ConfigError, match=r"upstream\.network\.kill_switch.*false for a relay"):
        load(tmp_path, BASE + UPSTREAM.replace('routes = ["0.0.0.0/0"]', 'routes = ["0.0.0.0/0"]\nkill_switch = true'))
    with pytest.raises(config.ConfigError, match=r"network\.upstream_interface.*nothing for a relay"):
        load(tmp_path, BASE + 'upstream_interface = "eth0"\n' + UPSTREAM)


def test_a_missing_upstream_gateway_names_the_table(tmp_path):
    with pytest.raises(config.ConfigError, match=r"'upstream\.gateway'"):
        load(tmp_path, BASE + '[upstream.network]\ntun = "tgu0"\n')
