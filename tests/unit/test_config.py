import base64
from pathlib import Path

import pytest

from tunnelgate import config

KEY = base64.b64encode(bytes(range(32))).decode()

GATEWAY = """
[node]
private_key_file = "gw.key"
state_dir = "state"
[link]
listen = "198.18.1.1:51900"
[network]
tun = "tgs0"
address = "100.64.0.1/24"
upstream_interface = "veth-up"
"""

CLIENT = f"""
[node]
private_key_file = "/etc/c.key"
state_dir = "/var/lib/x"
[gateway]
endpoint = "198.18.1.1:51900"
public_key = "{KEY}"
[network]
routes = ["0.0.0.0/0", "198.18.2.0/24"]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "t.toml"
    p.write_text(text)
    return p


def test_gateway_loads_with_paths_relative_to_file(tmp_path):
    cfg = config.load(write(tmp_path, GATEWAY))
    assert cfg.role == "gateway"
    assert cfg.node.private_key_file == tmp_path / "gw.key"
    assert cfg.node.state_dir == tmp_path / "state"
    assert cfg.listen == ("198.18.1.1", 51900)
    assert str(cfg.address) == "100.64.0.1/24"
    assert cfg.mtu == 1420


def test_client_loads(tmp_path):
    cfg = config.load(write(tmp_path, CLIENT))
    assert cfg.role == "client"
    assert cfg.gateway_public_key == bytes(range(32))
    assert cfg.routes == ("0.0.0.0/0", "198.18.2.0/24")
    assert cfg.tun == "tg0"


@pytest.mark.parametrize("old,new,words", [
    ('listen = "198.18.1.1:51900"', 'listen = "198.18.1.1"', ["link.listen", "ADDRESS:PORT"]),
    ('listen = "198.18.1.1:51900"', 'listen = "gw.example:51900"', ["link.listen", "IP address"]),
    ('address = "100.64.0.1/24"', 'address = "100.64.0.1/32"', ["network.address", "/30"]),
    ('address = "100.64.0.1/24"', 'address = 5', ["network.address", "expected"]),
    ('tun = "tgs0"', 'tun = "a-name-that-is-too-long"', ["network.tun", "interface name"]),
    ('upstream_interface = "veth-up"', 'upstream_intrface = "veth-up"', ["network.upstream_interface", "missing"]),
    ('[link]', '[link]\nlisten_port = 5', ["link.listen_port", "unknown key"]),
])
def test_gateway_errors_name_file_key_and_expectation(tmp_path, old, new, words):
    p = write(tmp_path, GATEWAY.replace(old, new))
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    msg = str(e.value)
    assert str(p) in msg
    for w in words:
        assert w in msg


def test_client_errors(tmp_path):
    with pytest.raises(config.ConfigError, match="gateway.public_key.*32 bytes"):
        config.load(write(tmp_path, CLIENT.replace(KEY, base64.b64encode(b"short").decode())))
    with pytest.raises(config.ConfigError, match="network.routes.*prefixes"):
        config.load(write(tmp_path, CLIENT.replace('"198.18.2.0/24"', '"198.18.2.1/24"')))
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[node"))
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(tmp_path / "missing.toml")
    with pytest.raises(config.ConfigError, match="neither a gateway"):
        config.load(write(tmp_path, "[node]\n"))


def test_shipped_examples_load():
    root = Path(__file__).resolve().parents[2] / "conf"
    assert config.load(root / "gateway.toml").role == "gateway"
    # the client example carries a placeholder key that must be replaced
    with pytest.raises(config.ConfigError, match="public_key"):
        config.load(root / "client.toml")
