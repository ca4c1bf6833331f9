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


def test_gateway_dual_stack_gives_each_peer_its_ipv4_host_number(tmp_path):
    cfg = config.load(write(tmp_path, GATEWAY.replace('tun = "tgs0"', 'address6 = "fd64:7467::1/120"')))
    assert str(cfg.address6) == "fd64:7467::1/120"
    assert str(config.peer_address6(cfg.address, cfg.address6, "100.64.0.254")) == "fd64:7467::fe"
    assert config.load(write(tmp_path, GATEWAY)).address6 is None


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
    ('tun = "tgs0"', 'address6 = "fd64::1"', ["network.address6", "with prefix", "fd64:7467::1/64"]),
    ('tun = "tgs0"', 'address6 = "100.64.0.1/24"', ["network.address6", "IPv6"]),
    ('tun = "tgs0"', 'address6 = "fd64::1/121"', ["network.address6", "8 host bits", "/120"]),
    ('tun = "tgs0"', 'address6 = "fd64::2/64"', ["network.address6", "same host number", "(1)"]),
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


# --- [pricing], [policy], [payment] -----------------------------------------------------------

from tunnelgate.money import parse_price  # noqa: E402
from tunnelgate.protocol.buyer import ClientPolicy  # noqa: E402
from tunnelgate.protocol.seller import Pricing  # noqa: E402


def load_err(tmp_path: Path, text: str) -> str:
    p = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: "), msg
    return msg


def test_gateway_defaults_without_new_sections(tmp_path):
    cfg = config.load(write(tmp_path, GATEWAY))
    assert isinstance(cfg.pricing, Pricing)
    assert cfg.pricing.default_price == cfg.pricing.floor_price == parse_price("0.5")
    assert cfg.pricing.payment_methods == ("dummy",) and cfg.pricing.account == ""
    assert cfg.pricing.prefix_prices == ()
    assert (cfg.pricing.contract_kb, cfg.pricing.contract_time_s) == (10_000, 3600)
    assert cfg.pricing.scope == "host"
    assert cfg.payment == config.Payment("dummy")
    assert cfg.payment.settings_dict() == {}


def test_client_defaults_without_new_sections(tmp_path):
    cfg = config.load(write(tmp_path, CLIENT))
    assert cfg.policy == ClientPolicy(max_price=parse_price("1"))
    assert cfg.policy.max_spend_total is None
    assert cfg.payment.backend == "dummy"
    assert (cfg.payment.prepay_msat, cfg.payment.low_balance_msat) == (0, 0)


PRICING = """
[pricing]
default_price = "0.5"
floor_price = "0.2"
contract_kb = 20000
contract_time_s = 1800
grace_time_s = 15
grace_kb = 500
scope = 24
scope6 = 64
no_deal_backoff_s = 30
no_upstream_backoff_s = 3
max_rounds = 5
proposal_timeout_s = 7
[[pricing.route]]
prefix = "198.18.2.0/24"
price = "0.1"
[[pricing.route]]
prefix = "198.19.0.0/16"
price = "0"
[[pricing.route]]
prefix = "2001:db8::/32"
price = 2
"""


def test_pricing_all_keys(tmp_path):
    cfg = config.load(write(tmp_path, GATEWAY + PRICING))
    assert cfg.pricing == Pricing(
        default_price=500_000, floor_price=200_000,
        prefix_prices=(("198.18.2.0/24", 100_000), ("198.19.0.0/16", 0), ("2001:db8::/32", 2_000_000)),
        contract_kb=20000, contract_time_s=1800, grace_time_s=15, grace_kb=500, scope=24, scope6=64,
        payment_methods=("dummy",), account="", max_rounds=5, no_deal_backoff_s=30, no_upstream_backoff_s=3,
        proposal_timeout_s=7, strangers_kb_per_min=2000)     # not set: 4 x grace_kb


def test_strangers_budget_set(tmp_path):
    cfg = config.load(write(tmp_path, GATEWAY + PRICING.replace("grace_kb = 500", "grace_kb = 500\n"
                                                                "strangers_kb_per_min = 0")))
    assert cfg.pricing.strangers_kb_per_min == 0        # strangers pay before anything flows


def test_max_contract_kb_default_and_set(tmp_path):
    assert config.load(write(tmp_path, GATEWAY)).pricing.max_contract_kb == 1_000_000
    big = config.load(write(tmp_path, GATEWAY + "[pricing]\ncontract_kb = 2000000\n")).pricing
    assert big.max_contract_kb == 2_000_000      # never below contract_kb
    set_ = config.load(write(tmp_path, GATEWAY + "[pricing]\nmax_contract_kb = 50000\n")).pricing
    assert set_.max_contract_kb == 50_000


def test_pricing_integer_price_and_floor_default(tmp_path):
    cfg = config.load(write(tmp_path, GATEWAY + '[pricing]\ndefault_price = 3\n'))
    assert cfg.pricing.default_price == cfg.pricing.floor_price == 3_000_000


@pytest.mark.parametrize("old,new,words", [
    ('default_price = "0.5"', 'default_price = 0.5',
     ["pricing.default_price", "float", 'write it in quotes: default_price = "0.5"']),
    ('floor_price = "0.2"', 'floor_price = 0.25', ["pricing.floor_price", 'quotes: floor_price = "0.25"']),
    ('price = "0.1"', 'price = 0.1', ["pricing.route[1].price", "quotes"]),
    ('price = "0.1"', 'price = "0.1234567"', ["pricing.route[1].price", "msat per KB", "decimals"]),
    ('price = "0.1"', 'price = "-1"', ["pricing.route[1].price", "negative"]),
    ('default_price = "0.5"', 'default_price = "cheap"', ["pricing.default_price", "not a decimal"]),
    ('default_price = "0.5"', 'default_price = true', ["pricing.default_price", "decimal string"]),
    ('floor_price = "0.2"', 'floor_price = "0.6"', ["pricing.floor_price", "at most default_price"]),
    ('prefix = "198.18.2.0/24"', 'prefix = "198.18.2.1/24"', ["pricing.route[1].prefix", "network prefix"]),
    ('prefix = "198.18.2.0/24"', 'prefix = "mesh"', ["pricing.route[1].prefix", "network prefix"]),
    ('prefix = "198.19.0.0/16"', 'prefix = "198.18.2.0/24"', ["pricing.route[2].prefix", "at most once"]),
    ('prefix = "198.18.2.0/24"', 'prefix = "198.18.2.0/28"', ["pricing.route[1].prefix", "scope = 24"]),
    ('prefix = "2001:db8::/32"', 'prefix = "2001:db8::/96"', ["pricing.route[3].prefix", "scope6 = 64"]),
    ('price = 2', 'price = 2\ncost = 1', ["pricing.route[3].cost", "unknown key"]),
    ('price = 2', '', ["pricing.route[3].price", "missing"]),
    ('contract_kb = 20000', 'contract_kb = 0', ["pricing.contract_kb", "whole number of KB", ">= 1"]),
    ('contract_kb = 20000', 'contract_kb = 1.5', ["pricing.contract_kb", "whole number"]),
    ('contract_kb = 20000', 'contract_kb = 20000\nmax_contract_kb = 100',
     ["pricing.max_contract_kb", "at least contract_kb", ">= 20000"]),
    ('contract_time_s = 1800', 'contract_time_s = "1h"', ["pricing.contract_time_s", "seconds"]),
    ('grace_time_s = 15', 'grace_time_s = -1', ["pricing.grace_time_s", ">= 0"]),
    ('grace_kb = 500', 'grace_kb = -5', ["pricing.grace_kb", ">= 0"]),
    ('grace_kb = 500', 'grace_kb = 500\nstrangers_kb_per_min = -1',
     ["pricing.strangers_kb_per_min", ">= 0", "never paid"]),
    ('grace_kb = 500', 'grace_kb = 500\nstrangers_kb_per_min = "lots"', ["pricing.strangers_kb_per_min",
                                                                         "whole number of KB a minute"]),
    ('scope = 24', 'scope = 33', ["pricing.scope", '"host" or a prefix length from 0 to 32']),
    ('scope = 24', 'scope = "network"', ["pricing.scope", '"host"']),
    ('scope6 = 64', 'scope6 = 129', ["pricing.scope6", "0 to 128"]),
    ('max_rounds = 5', 'max_rounds = 0', ["pricing.max_rounds", ">= 1"]),
    ('no_deal_backoff_s = 30', 'no_deal_backoff_s = -1', ["pricing.no_deal_backoff_s", ">= 0"]),
    ('no_upstream_backoff_s = 3', 'no_upstream_backoff_s = 0', ["pricing.no_upstream_backoff_s", ">= 1"]),
    ('max_rounds = 5', 'max_round = 5', ["pricing.max_round", "unknown key"]),
    ('[[pricing.route]]\nprefix = "198.18.2.0/24"', '[pricing.route]\nprefix = "198.18.2.0/24"',
     ["pricing.route", "[[pricing.route]]"]),
])
def test_pricing_errors(tmp_path, old, new, words):
    assert old in PRICING
    text = GATEWAY + PRICING.replace(old, new, 1)
    if old.startswith("[[pricing.route]]"):   # keep it valid TOML: only one route then
        text = GATEWAY + PRICING.split("[[pricing.route]]")[0] + '[pricing.route]\nprefix = "198.18.2.0/24"\n'
    msg = load_err(tmp_path, text)
    for w in words:
        assert w in msg, (w, msg)


POLICY = """
[policy]
max_price = "1"
counter_fraction = "0.80"
data_renewal_kb = 2000
time_renewal_s = 120
max_spend_per_hour = 100000
max_spend_per_day = "1000 sat"
max_spend_total = 10000000
usage_tolerance = "0.05"
[[policy.route]]
prefix = "198.18.2.0/24"
max_price = "2"
"""


def test_policy_all_keys(tmp_path):
    cfg = config.load(write(tmp_path, CLIENT + POLICY))
    assert cfg.policy == ClientPolicy(
        max_price=1_000_000, prefix_max_prices=(("198.18.2.0/24", 2_000_000),), counter_fraction="0.8",
        data_renewal_kb=2000, time_renewal_s=120, max_spend_per_hour=100_000,
        max_spend_per_day=1_000_000, max_spend_total=10_000_000, usage_tolerance="0.05")


@pytest.mark.parametrize("old,new,words", [
    ('max_price = "1"', 'max_price = 1.5', ["policy.max_price", 'quotes: max_price = "1.5"']),
    ('max_price = "2"', 'max_price = "two"', ["policy.route[1].max_price", "decimal"]),
    ('prefix = "198.18.2.0/24"', 'prefix = "198.18.2.9/24"', ["policy.route[1].prefix", "network prefix"]),
    ('max_price = "2"', 'price = "2"', ["policy.route[1].max_price", "missing"]),
    ('counter_fraction = "0.80"', 'counter_fraction = 0.8', ["policy.counter_fraction", "quotes"]),
    ('counter_fraction = "0.80"', 'counter_fraction = "1.5"', ["policy.counter_fraction", "from 0 to 1"]),
    ('usage_tolerance = "0.05"', 'usage_tolerance = "-0.1"', ["policy.usage_tolerance", "negative"]),
    ('data_renewal_kb = 2000', 'data_renewal_kb = -1', ["policy.data_renewal_kb", "KB"]),
    ('time_renewal_s = 120', 'time_renewal_s = 1.5', ["policy.time_renewal_s", "seconds"]),
    ('max_spend_per_hour = 100000', 'max_spend_per_hour = 100.5', ["policy.max_spend_per_hour", "quotes"]),
    ('max_spend_per_hour = 100000', 'max_spend_per_hour = "1.5"', ["policy.max_spend_per_hour", "whole"]),
    ('max_spend_total = 10000000', 'max_spend_total = -1', ["policy.max_spend_total", "negative"]),
    ('max_spend_total = 10000000', 'max_spend_totl = 1', ["policy.max_spend_totl", "unknown key"]),
])
def test_policy_errors(tmp_path, old, new, words):
    assert old in POLICY
    msg = load_err(tmp_path, CLIENT + POLICY.replace(old, new, 1))
    for w in words:
        assert w in msg, (w, msg)


def test_payment_dummy_settings(tmp_path):
    cfg = config.load(write(tmp_path, CLIENT + '[payment]\nbackend = "dummy"\nbalance_msat = "50 sat"\n'
                                      'fee_msat = 2\nprepay_msat = 1000\nlow_balance_msat = 500\n'))
    assert cfg.payment == config.Payment("dummy", (("balance_msat", 50_000), ("fee_msat", 2)), 1000, 500)
    assert cfg.payment.settings_dict() == {"balance_msat": 50_000, "fee_msat": 2}
    gw = config.load(write(tmp_path, GATEWAY + '[payment]\nbackend = "dummy"\npending = true\n'))
    assert gw.payment.settings_dict() == {"pending": True}
    assert gw.pricing.payment_methods == ("dummy",)


def test_payment_settings_reach_the_backend(tmp_path):
    from tunnelgate.payments import load_backend
    cfg = config.load(write(tmp_path, CLIENT + '[payment]\nbalance_msat = 7000\n'))
    payer = load_backend(cfg.payment.backend, cfg.payment.settings_dict(), role="payer")
    import asyncio
    assert asyncio.run(payer.balance_msat()) == 7000


def test_payment_cashu_paths_relative_to_config(tmp_path):
    gw = config.load(write(tmp_path, GATEWAY + '[payment]\nbackend = "cashu"\n'
                                     'mints = ["http://127.0.0.1:3338", "https://mint.example/"]\n'
                                     'p2pk_key_file = "p2pk.key"\nwallet_dir = "ecash"\n'
                                     'redeem_timeout_s = 5\n'))
    assert gw.payment.backend == "cashu" and gw.pricing.payment_methods == ("cashu",)
    assert gw.payment.settings_dict() == {
        "mints": ("http://127.0.0.1:3338", "https://mint.example/"),
        "p2pk_key_file": str(tmp_path / "p2pk.key"), "wallet_dir": str(tmp_path / "ecash"),
        "redeem_timeout_s": 5.0}
    one = config.load(write(tmp_path, GATEWAY + '[payment]\nbackend = "cashu"\nmints = "http://m:3338"\n'
                                      'p2pk_key_file = "/k"\nwallet_dir = "/w"\n'))
    assert one.payment.get("mints") == ("http://m:3338",)
    cl = config.load(write(tmp_path, CLIENT + '[payment]\nbackend = "cashu"\nmint_url = "http://127.0.0.1:3338"\n'
                                     'wallet_dir = "wallet"\nprepay_msat = "10 sat"\n'))
    assert cl.payment.settings_dict() == {"mint_url": "http://127.0.0.1:3338", "wallet_dir": str(tmp_path / "wallet")}
    assert cl.payment.prepay_msat == 10_000


def test_payment_bitcoind(tmp_path):
    url = "http://u:p@127.0.0.1:18443/wallet/gw"
    gw = config.load(write(tmp_path, GATEWAY + f'[payment]\nbackend = "bitcoind"\nrpc_url = "{url}"\n'
                                     'min_confirmations = 0\nrpc_timeout_s = 10\n'))
    assert gw.payment.settings_dict() == {"rpc_url": url, "min_confirmations": 0, "rpc_timeout_s": 10.0}
    cl = config.load(write(tmp_path, CLIENT + f'[payment]\nbackend = "bitcoind"\nrpc_url = "{url}"\n'
                                     'replaceable = true\nfee_rate_sat_vb = "2.5"\n'))
    assert cl.payment.settings_dict() == {"rpc_url": url, "replaceable": True, "fee_rate_sat_vb": "2.5"}


def test_payment_electrum(tmp_path):
    url = "http://u:p@127.0.0.1:7777"
    gw = config.load(write(tmp_path, GATEWAY + f'[payment]\nbackend = "electrum"\nrpc_url = "{url}"\n'
                                     'method = "onchain"\nmin_confirmations = 0\nzeroconf_max_msat = "50 sat"\n'
                                     'onchain_min_msat = "20000 sat"\ninvoice_msat = 2000\n'))
    assert gw.payment.settings_dict() == {"rpc_url": url, "method": "onchain", "min_confirmations": 0,
                                          "zeroconf_max_msat": 50_000, "onchain_min_msat": 20_000_000,
                                          "invoice_msat": 2000}
    cl = config.load(write(tmp_path, CLIENT + '[payment]\nbackend = "electrum"\nelectrum_dir = "el"\n'
                                     'max_invoice_msat = "100 sat"\n'))
    assert cl.payment.settings_dict() == {"electrum_dir": str(tmp_path / "el"), "max_invoice_msat": 100_000}
    for bad, words in (('method = "paypal"', '"lightning" or "onchain"'),
                       ('max_invoice_msat = 5', "on a client only")):
        with pytest.raises(config.ConfigError) as e:
            config.load(write(tmp_path, GATEWAY + f'[payment]\nbackend = "electrum"\n{bad}\n'))
        assert "payment." + bad.split()[0] in str(e.value) and words in str(e.value)


@pytest.mark.parametrize("base,section,words", [
    ("gw", 'backend = "lightning"', ["payment.backend", "one of bitcoind, cashu, dummy, electrum"]),
    ("gw", 'backend = 1', ["payment.backend", "payment backend name"]),
    ("gw", 'prepay_msat = 5', ["payment.prepay_msat", "only in a client config"]),
    ("gw", 'low_balance_msat = 5', ["payment.low_balance_msat", "only in a client config"]),
    ("gw", 'balance_msat = 5', ["payment.balance_msat", "on a client only"]),
    ("cl", 'pending = true', ["payment.pending", "on the gateway only"]),
    ("cl", 'balance_msat = 1.5', ["payment.balance_msat", "quotes"]),
    ("cl", 'prepay_msat = -3', ["payment.prepay_msat", "negative"]),
    ("cl", 'low_balance_msat = "lots"', ["payment.low_balance_msat", "msat"]),
    ("cl", 'balance_mast = 5', ["payment.balance_mast", "unknown key for the dummy backend",
                                "balance_msat"]),
    ("gw", 'backend = "cashu"\np2pk_key_file = "k"\nwallet_dir = "w"',
     ["payment.mints", "missing", "cashu backend on the gateway"]),
    ("gw", 'backend = "cashu"\nmints = []\np2pk_key_file = "k"\nwallet_dir = "w"',
     ["payment.mints", "at least one"]),
    ("gw", 'backend = "cashu"\nmints = ["ftp://m"]\np2pk_key_file = "k"\nwallet_dir = "w"',
     ["payment.mints", "http://"]),
    ("gw", 'backend = "cashu"\nmints = ["http://m"]\nwallet_dir = "w"', ["payment.p2pk_key_file", "missing"]),
    ("gw", 'backend = "cashu"\nmints = ["http://m"]\np2pk_key_file = 5\nwallet_dir = "w"',
     ["payment.p2pk_key_file", "path"]),
    ("cl", 'backend = "cashu"\nwallet_dir = "w"', ["payment.mint_url", "missing", "on a client"]),
    ("cl", 'backend = "cashu"\nwallet_dir = "w"\nmint_url = "mint"', ["payment.mint_url", "http://"]),
    ("cl", 'backend = "cashu"\nwallet_dir = "w"\nmint_url = "http://m"\nmints = ["http://m"]',
     ["payment.mints", "gateway only"]),
    ("gw", 'backend = "bitcoind"', ["payment.rpc_url", "missing"]),
    ("gw", 'backend = "bitcoind"\nrpc_url = "127.0.0.1:8332"', ["payment.rpc_url", "JSON-RPC URL"]),
    ("gw", 'backend = "bitcoind"\nrpc_url = "http://h/"\nmin_confirmations = -1',
     ["payment.min_confirmations", ">= 0"]),
    ("gw", 'backend = "bitcoind"\nrpc_url = "http://h/"\nreplaceable = true', ["payment.replaceable", "client only"]),
    ("cl", 'backend = "bitcoind"\nrpc_url = "http://h/"\nfee_rate_sat_vb = "0"',
     ["payment.fee_rate_sat_vb", "greater than 0"]),
    ("cl", 'backend = "bitcoind"\nrpc_url = "http://h/"\nrpc_timeout_s = 0', ["payment.rpc_timeout_s", "greater than 0"]),
    ("cl", 'backend = "bitcoind"\nrpc_url = "http://h/"\nreplaceable = "yes"', ["payment.replaceable", "true or false"]),
])
def test_payment_errors(tmp_path, base, section, words):
    msg = load_err(tmp_path, (GATEWAY if base == "gw" else CLIENT) + "[payment]\n" + section + "\n")
    for w in words:
        assert w in msg, (w, msg)


def test_rpc_url_password_not_echoed(tmp_path):
    msg = load_err(tmp_path, GATEWAY + '[payment]\nbackend = "bitcoind"\nrpc_url = "u:secret@h"\n')
    assert "secret" not in msg


def test_gateway_and_client_sections_do_not_mix(tmp_path):
    assert "policy" in load_err(tmp_path, GATEWAY + POLICY)
    assert "pricing" in load_err(tmp_path, CLIENT + PRICING)


def test_config_is_frozen_and_hashable(tmp_path):
    cfg = config.load(write(tmp_path, GATEWAY + PRICING + '[payment]\nbackend = "cashu"\nmints = ["http://m"]\n'
                                      'p2pk_key_file = "k"\nwallet_dir = "w"\n'))
    hash(cfg.payment)
    hash(cfg.pricing)
    with pytest.raises(Exception):
        cfg.payment.backend = "dummy"


def test_shipped_examples_carry_the_new_sections(tmp_path):
    root = Path(__file__).resolve().parents[2] / "conf"
    gw = config.load(root / "gateway.toml")
    assert gw.pricing.default_price == parse_price("0.5") and gw.pricing.floor_price == parse_price("0.2")
    assert gw.payment.backend == "dummy"
    text = (root / "client.toml").read_text()
    placeholder = "REPLACE-with-`tunnelgate pubkey gateway.key`="
    assert placeholder in text
    p = tmp_path / "client.toml"
    p.write_text(text.replace(placeholder, KEY))
    cl = config.load(p)
    assert cl.policy.max_price == parse_price("1") and cl.policy.max_spend_total == 10_000_000
    assert cl.payment.backend == "dummy"


def test_gateway_metrics_listen(tmp_path):
    cfg = config.load(write(tmp_path, GATEWAY + '\n[metrics]\nlisten = "127.0.0.1:9108"\n'))
    assert cfg.metrics_listen == ("127.0.0.1", 9108)
    assert config.load(write(tmp_path, GATEWAY)).metrics_listen is None
    with pytest.raises(config.ConfigError, match="metrics.listen"):
        config.load(write(tmp_path, GATEWAY + '\n[metrics]\nlisten = "9108"\n'))


def test_session_keep_warm(tmp_path):
    from tunnelgate.daemon.base import Daemon
    from tunnelgate.wakeups import IDLE_WAIT_S, WARM_WAIT_S
    assert config.load(write(tmp_path, CLIENT)).session.keep_warm_s == 10.0
    for text, after_a_packet in (("", WARM_WAIT_S), ("keep_warm_s = 0", IDLE_WAIT_S)):
        cfg = config.load(write(tmp_path, CLIENT + f"\n[session]\n{text}\n"))
        d = Daemon(cfg, bytes(32))                 # the data threads' timeout follows the config
        d.stats["rx_packets"] += 1
        assert d.warmth.timeout(100.0) == after_a_packet
    assert cfg.session.keep_warm_s == 0.0
    with pytest.raises(config.ConfigError, match="session.keep_warm_s.*>= 0"):
        config.load(write(tmp_path, CLIENT + '\n[session]\nkeep_warm_s = -1\n'))


def test_session_cipher(tmp_path):
    assert config.load(write(tmp_path, CLIENT)).session.cipher == "auto"
    cfg = config.load(write(tmp_path, CLIENT + '\n[session]\ncipher = "chacha"\n'))
    assert cfg.session.cipher == "chacha"
    with pytest.raises(config.ConfigError, match="session.cipher.*aesgcm"):
        config.load(write(tmp_path, CLIENT + '\n[session]\ncipher = "des"\n'))


# --- values that load but cannot work (issue 17, item 7) ---------------------------------

U32 = 2**32 - 1


@pytest.mark.parametrize("section, value, words", [
    # what the wire format carries: PROPOSE's limit_kb, time_s, grace_kb are u32
    ("[pricing]", "contract_kb = 5000000000", ["pricing.contract_kb", f"at most {U32}", "PROPOSE"]),
    ("[pricing]", "contract_time_s = 99999999999", ["pricing.contract_time_s", f"at most {U32}"]),
    ("[pricing]", "grace_kb = 5000000000", ["pricing.grace_kb", f"at most {U32}"]),
    ("[pricing]", "grace_time_s = 4294967296", ["pricing.grace_time_s", f"at most {U32}"]),
    ("[pricing]", "contract_kb = 10\nmax_contract_kb = 4294967296", ["pricing.max_contract_kb", f"at most {U32}"]),
    ("[pricing]", "no_deal_backoff_s = 4294967296", ["pricing.no_deal_backoff_s", "NO_DEAL"]),
    ("[pricing]", "max_rounds = 256", ["pricing.max_rounds", "at most 255"]),
    ("[pricing]", "proposal_timeout_s = 99999999999", ["pricing.proposal_timeout_s", "at most 86400"]),
    # the dearest contract must be payable (amount_msat <= all bitcoin)
    ("[pricing]", 'default_price = "1000000000"\nmax_contract_kb = 4000000000',
     ["pricing.default_price", "max_contract_kb", "all bitcoin"]),
    ("[pricing]", 'max_contract_kb = 4000000000\n[[pricing.route]]\nprefix = "198.18.2.0/24"\nprice = "900000000"',
     ["pricing.route[1].price", "all bitcoin"]),
    # the timers: finite, and within what the session requires
    ("[session]", "keep_warm_s = nan", ["session.keep_warm_s", ">= 0 and at most 86400"]),
    ("[session]", "keep_warm_s = inf", ["session.keep_warm_s", "at most 86400"]),
    ("[session]", "keepalive_s = 1e308", ["session.keepalive_s", "at most 180"]),
    ("[session]", "keepalive_s = nan", ["session.keepalive_s", "at most 180"]),
    ("[session]", f"keepalive_s = {10**30}", ["session.keepalive_s", "at most 180"]),
    ("[session]", "rekey_after_s = 500", ["session.rekey_after_s", "at most 179", "expires"]),
    ("[session]", "dead_after_s = 0.5", ["session.dead_after_s", "greater than 1", "live gateway"]),
    ("[session]", "dead_after_s = 1", ["session.dead_after_s", "greater than 1"]),
    ("[session]", "handshake_retry_s = -inf", ["session.handshake_retry_s", "greater than 0"]),
    ("[session]", "handshake_retry_s = 1000", ["session.handshake_retry_s", "at most 180"]),
    ("[payment]", 'backend = "bitcoind"\nrpc_url = "http://h/"\nrpc_timeout_s = nan',
     ["payment.rpc_timeout_s", "at most 86400"]),
    ("[payment]", 'backend = "bitcoind"\nrpc_url = "http://h/"\nmin_confirmations = 99999999999999',
     ["payment.min_confirmations", "at most 1000"]),
])
def test_gateway_values_that_cannot_work_are_refused_at_load(tmp_path, section, value, words):
    msg = load_err(tmp_path, GATEWAY + f"{section}\n{value}\n")
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("section, value, words", [
    ("[policy]", "data_renewal_kb = 4294967296", ["policy.data_renewal_kb", f"at most {U32}"]),
    ("[policy]", "time_renewal_s = 4294967296", ["policy.time_renewal_s", f"at most {U32}"]),
    ("[payment]", 'backend = "bitcoind"\nrpc_url = "http://h/"\nfee_rate_sat_vb = "1e30"',
     ["payment.fee_rate_sat_vb", "at most 10000"]),
    ("[payment]", 'backend = "bitcoind"\nrpc_url = "http://h/"\nfee_rate_sat_vb = "NaN"',
     ["payment.fee_rate_sat_vb", "greater than 0"]),
    ("[session]", "rekey_after_s = 500", ["session.rekey_after_s", "at most 179"]),
])
def test_client_values_that_cannot_work_are_refused_at_load(tmp_path, section, value, words):
    msg = load_err(tmp_path, CLIENT + f"{section}\n{value}\n")
    for w in words:
        assert w in msg, (w, msg)


def test_timer_bounds_are_the_sessions_own(tmp_path):
    """The largest values config lets through are ones session.Timing accepts."""
    cfg = config.load(write(tmp_path, CLIENT + "[session]\nkeepalive_s = 180\nrekey_after_s = 179\n"
                                      "dead_after_s = 180\nhandshake_retry_s = 180\nkeep_warm_s = 0\n"))
    assert cfg.session.timing.rekey_after_s == 179
    cfg = config.load(write(tmp_path, CLIENT + "[session]\ndead_after_s = 1.01\n"))
    assert cfg.session.timing.dead_after_s == 1.01


def test_session_timers_are_one_session_timing(tmp_path):
    """[session] yields the session's own Timing (its defaults where a key is omitted), which
    the daemons pass on as is: no second definition of the timers to copy field by field."""
    from tunnelgate import session
    assert config.load(write(tmp_path, CLIENT)).session.timing == session.Timing()
    cfg = config.load(write(tmp_path, GATEWAY + "[session]\nkeepalive_s = 4\nrekey_after_s = 60\n"
                                       "dead_after_s = 5\nhandshake_retry_s = 2\n"))
    assert cfg.session.timing == session.Timing(keepalive_s=4, rekey_after_s=60, dead_after_s=5,
                                                handshake_retry_s=2)


@pytest.mark.parametrize("key", [
    bytes(32),                                   # all zero
    bytes([1]) + bytes(31),                      # the point of order 1
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),   # order 8
])
def test_small_order_gateway_key_refused(tmp_path, key):
    text = CLIENT.replace(KEY, base64.b64encode(key).decode())
    msg = load_err(tmp_path, text)
    assert "gateway.public_key" in msg and "small-order" in msg, msg


def test_state_dir_that_is_a_file_refused(tmp_path):
    (tmp_path / "state").write_text("not a directory")
    msg = load_err(tmp_path, GATEWAY)
    assert "node.state_dir" in msg and str(tmp_path / "state") in msg and "not one" in msg, msg
    (tmp_path / "state").unlink()
    (tmp_path / "state").mkdir()
    assert config.load(write(tmp_path, GATEWAY)).node.state_dir.is_dir()


def test_private_key_file_that_is_a_directory_refused(tmp_path):
    (tmp_path / "gw.key").mkdir()
    msg = load_err(tmp_path, GATEWAY)
    assert "node.private_key_file" in msg and "directory" in msg, msg


def test_missing_upstream_interface_named_at_start(tmp_path):
    cfg = config.load(write(tmp_path, GATEWAY.replace('"veth-up"', '"tgnosuch0"')))
    with pytest.raises(config.ConfigError) as e:
        config.check_interfaces(cfg)
    msg = str(e.value)
    assert msg.startswith(f"{cfg.path}: key 'network.upstream_interface'"), msg
    assert "'tgnosuch0'" in msg and "this network namespace" in msg, msg
    config.check_interfaces(config.load(write(tmp_path, GATEWAY.replace('"veth-up"', '"lo"'))))


def _serve(tmp_path, text):
    import subprocess
    import sys
    p = write(tmp_path, text)
    r = subprocess.run([sys.executable, "-m", "tunnelgate.cli", "serve", "-c", str(p)],
                       capture_output=True, text=True, timeout=60)
    return p, r


@pytest.mark.parametrize("extra, key", [
    ("[pricing]\ncontract_kb = 5000000000\n", "pricing.contract_kb"),
    ("[session]\nrekey_after_s = 500\n", "session.rekey_after_s"),
    ("[session]\nkeep_warm_s = nan\n", "session.keep_warm_s"),
])
def test_serve_with_a_bad_value_exits_2_naming_file_and_key(tmp_path, extra, key):
    p, r = _serve(tmp_path, GATEWAY + extra)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert f"{p}: key '{key}'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout, r.stderr


def test_serve_with_a_missing_upstream_interface_exits_2(tmp_path):
    # refused before anything is set up; and gw.key does not exist, so even without the
    # check nothing would start in this (root) namespace
    p, r = _serve(tmp_path, GATEWAY.replace('"veth-up"', '"tgnosuch0"'))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert f"{p}: key 'network.upstream_interface'" in r.stderr and "tgnosuch0" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_client_kill_switch_defaults_on_for_a_full_tunnel_only(tmp_path):
    assert config.load(write(tmp_path, CLIENT)).kill_switch is True
    split = CLIENT.replace('routes = ["0.0.0.0/0", "198.18.2.0/24"]', 'routes = ["198.18.2.0/24"]')
    assert config.load(write(tmp_path, split)).kill_switch is False
    assert config.load(write(tmp_path, split + "kill_switch = true\n")).kill_switch is True
    assert config.load(write(tmp_path, CLIENT + "kill_switch = false\n")).kill_switch is False
    msg = load_err(tmp_path, CLIENT + 'kill_switch = "yes"\n')
    assert "network.kill_switch" in msg and "true or false" in msg


def test_a_placeholder_left_in_the_shipped_example_says_fill_in(tmp_path):
    import pathlib
    example = (pathlib.Path(__file__).parents[2] / "conf" / "client.toml").read_text()
    msg = load_err(tmp_path, example)
    assert "key 'gateway." in msg and "fill in" in msg and "placeholder" in msg, msg
    assert "not base64" not in msg


def test_gateway_lease_idle(tmp_path):
    assert config.load(write(tmp_path, GATEWAY)).lease_idle_s == 600.0
    net = 'upstream_interface = "veth-up"'
    cfg = config.load(write(tmp_path, GATEWAY.replace(net, net + "\nlease_idle_s = 45")))
    assert cfg.lease_idle_s == 45.0
    for bad in ("10", '"600"', "1e9"):
        with pytest.raises(config.ConfigError, match=r"network.lease_idle_s.*>= 30 .*keepalive"):
            config.load(write(tmp_path, GATEWAY.replace(net, net + f"\nlease_idle_s = {bad}")))


def test_daemon_user_in_both_roles(tmp_path):
    for text in (GATEWAY, CLIENT):
        assert config.load(write(tmp_path, text)).user == "tunnelgate"
        assert config.load(write(tmp_path, text + '\n[daemon]\nuser = "root"\n')).user == "root"
        for bad in ('"Bad User"', '""', "0", '"../x"'):
            with pytest.raises(config.ConfigError, match="daemon.user"):
                config.load(write(tmp_path, text + f"\n[daemon]\nuser = {bad}\n"))
        with pytest.raises(config.ConfigError, match="daemon.group.*unknown key"):
            config.load(write(tmp_path, text + '\n[daemon]\ngroup = "x"\n'))
