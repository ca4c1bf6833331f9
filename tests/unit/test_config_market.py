"""The market's config tables: several gateways, discovery, choice, advertise --
each error names the file and key and says what to write."""

import base64
import os
import tomllib
from pathlib import Path

import pytest

from tunnelgate import config_market as M
from tunnelgate.config import ConfigError, _Reader, decode_key

KEY1 = base64.b64encode(os.urandom(32)).decode()
KEY2 = base64.b64encode(os.urandom(32)).decode()


def reader(text: str) -> _Reader:
    return _Reader(Path("/etc/tg/client.toml"), tomllib.loads(text))


def key_reader(t, key):
    return decode_key(t.get(key, str, "a key"))


def test_one_gateway_and_a_list():
    r = reader(f'''
[gateway]
endpoint = "198.18.1.11:51900"
public_key = "{KEY1}"
[[gateways]]
endpoint = "[2001:2:0:1::c]:51900"
public_key = "{KEY2}"
label = "south"
''')
    gws = M.gateways(r, key_reader)
    assert [(g.endpoint, g.label) for g in gws] == [(("198.18.1.11", 51900), ""), (("2001:2:0:1::c", 51900), "south")]


def test_a_gateway_twice_is_refused():
    r = reader(f'''
[[gateways]]
endpoint = "198.18.1.11:51900"
public_key = "{KEY1}"
[[gateways]]
endpoint = "198.18.1.12:51900"
public_key = "{KEY1}"
''')
    with pytest.raises(ConfigError, match="gateway 2 repeats the public key of gateway 1"):
        M.gateways(r, key_reader)


def test_discovery_needs_interfaces_and_checks_names():
    with pytest.raises(ConfigError, match="discovery.interfaces.*at least one"):
        M.discovery(reader("[discovery]\nmdns = true\n"))
    with pytest.raises(ConfigError, match=r"discovery.interfaces\[2\]"):
        M.discovery(reader('[discovery]\nmdns = true\ninterfaces = ["eth0", "bad name!"]\n'))
    d = M.discovery(reader('[discovery]\nmdns = true\ninterfaces = ["eth0"]\nmax_candidates = 8\n'))
    assert d == M.Discovery(True, ("eth0",), 8)
    assert M.discovery(reader("")) == M.Discovery()


def test_choice_bounds():
    assert M.choice(reader('[choice]\nswitch_margin = "0.3"\nfailover_s = 0.4\n')) == M.Choice(0.3, 0.4)
    with pytest.raises(ConfigError, match="switch_margin"):
        M.choice(reader('[choice]\nswitch_margin = "1"\n'))
    with pytest.raises(ConfigError, match="failover_s"):
        M.choice(reader('[choice]\nfailover_s = 0.01\n'))


def test_advertise_defaults_to_the_listen_address():
    a = M.advertise(reader('[advertise]\nmdns = true\ninterfaces = ["veth-c"]\nlabel = "north"\n'),
                    ("198.18.1.11", 51900))
    assert a.endpoints == ("198.18.1.11:51900",) and a.label == "north" and a.lifetime_s == 600
    with pytest.raises(ConfigError, match=r"advertise.endpoints\[1\]"):
        M.advertise(reader('[advertise]\nendpoints = ["nowhere"]\n'), ("198.18.1.11", 51900))
    with pytest.raises(ConfigError, match="advertise.label"):
        M.advertise(reader('[advertise]\nlabel = "a b"\n'), ("198.18.1.11", 51900))
    with pytest.raises(ConfigError, match="advertise.typo"):
        M.advertise(reader('[advertise]\ntypo = 1\n'), ("198.18.1.11", 51900))
