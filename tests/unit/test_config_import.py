import base64
import os
import stat
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunnelgate import config, config_import as ci
from tunnelgate.cli_config import config_group
from tunnelgate.money import parse_price

KEY = base64.b64encode(bytes(range(32))).decode()

SEED = """\
# seed net.conf
LINK_INTERFACE=mesh0
NETWORK_INTERFACE="eth1"
PAYMENT_INTERFACE='cashu'   # ecash
ACCOUNT_ID=http://127.0.0.1:3338/
DEFAULT_PRICE=10
CONTRACT_DATA=10000
CONTRACT_TIME=3600
DATA_RENEWAL=1000000
TIME_RENEWAL=60
IGNORE_INTERFACE=wlan0
"""


def fill_client(text: str) -> str:
    return text.replace(ci.PH_ENDPOINT, "198.18.1.1:51900").replace(ci.PH_PUBLIC_KEY, KEY)


def load_text(tmp_path: Path, text: str, name: str = "out.toml"):
    p = tmp_path / name
    p.write_text(text)
    return config.load(p)


def test_gateway_conversion_loads_as_is(tmp_path):
    toml_text, notes = ci.convert(SEED, "gateway", "net.conf")
    tomllib.loads(toml_text)
    cfg = load_text(tmp_path, toml_text)
    assert cfg.role == "gateway"
    assert cfg.upstream_interface == "wlan0"          # IGNORE_INTERFACE: the original's uplink
    assert cfg.listen == ("0.0.0.0", 51900)
    assert cfg.pricing.default_price == cfg.pricing.floor_price == parse_price("10")
    assert (cfg.pricing.contract_kb, cfg.pricing.contract_time_s) == (10_240, 3600)   # KiB → KB
    assert cfg.payment.backend == "cashu"
    assert cfg.payment.settings_dict() == {"mints": ("http://127.0.0.1:3338/",),
                                           "p2pk_key_file": str(tmp_path / "cashu-p2pk.key"),
                                           "wallet_dir": str(tmp_path / "ecash")}
    text = "\n".join(notes)
    assert 'net.conf:6: DEFAULT_PRICE=10 → [pricing] default_price = "10" (msat per KB)' in text
    assert "CONTRACT_DATA=10000 → [pricing] contract_kb = 10240" in text
    assert "CONTRACT_TIME=3600 → [pricing] contract_time_s = 3600" in text
    assert "NETWORK_INTERFACE=eth1 → not a module number" in text
    assert "LINK_INTERFACE=mesh0 → not a module number" in text
    assert 'IGNORE_INTERFACE=wlan0 → [network] upstream_interface = "wlan0"' in text
    assert "DATA_RENEWAL=1000000 → no equivalent on a gateway" in text
    assert "TIME_RENEWAL=60 → no equivalent on a gateway" in text
    assert 'PAYMENT_INTERFACE=cashu → [payment] backend = "cashu"' in text
    assert "ACCOUNT_ID=http://127.0.0.1:3338/ → [payment] mints" in text
    # every key the seed sets is accounted for in the notes
    for key in ("LINK_INTERFACE", "NETWORK_INTERFACE", "PAYMENT_INTERFACE", "ACCOUNT_ID", "DEFAULT_PRICE",
                "CONTRACT_DATA", "CONTRACT_TIME", "DATA_RENEWAL", "TIME_RENEWAL", "IGNORE_INTERFACE"):
        assert f"{key}=" in text, key


def test_client_conversion_loads_after_filling_placeholders(tmp_path):
    toml_text, notes = ci.convert(SEED, "client", "net.conf")
    tomllib.loads(toml_text)
    with pytest.raises(config.ConfigError, match="gateway.endpoint"):
        load_text(tmp_path, toml_text)
    with pytest.raises(config.ConfigError, match="gateway.public_key"):
        load_text(tmp_path, toml_text.replace(ci.PH_ENDPOINT, "198.18.1.1:51900"))
    cfg = load_text(tmp_path, fill_client(toml_text))
    assert cfg.role == "client"
    assert cfg.endpoint == ("198.18.1.1", 51900) and cfg.gateway_public_key == bytes(range(32))
    assert cfg.routes == ("0.0.0.0/0",)
    assert cfg.policy.max_price == parse_price("10")
    assert (cfg.policy.data_renewal_kb, cfg.policy.time_renewal_s) == (1000, 60)
    assert cfg.policy.max_spend_total is None
    assert cfg.payment.backend == "cashu"
    assert cfg.payment.settings_dict() == {"mint_url": "http://127.0.0.1:3338/",
                                           "wallet_dir": str(tmp_path / "ecash")}
    text = "\n".join(notes)
    assert 'DEFAULT_PRICE=10 → [policy] max_price = "10" (msat per KB)' in text
    assert "DATA_RENEWAL=1000000 → [policy] data_renewal_kb = 1000" in text
    assert "CONTRACT_DATA=10000 → no equivalent on a client" in text
    assert "to do before `tunnelgate up`: [gateway] endpoint" in text
    assert "Fill in before use" in toml_text


def test_comments_quotes_export_and_inline_comments():
    values, notes = ci.parse_seed(
        "# comment\n\n  export DEFAULT_PRICE = '0.25'  # trailing\nNETWORK_INTERFACE=eth0 # up\n"
        'ACCOUNT_ID="wallet #1"\nLINK_INTERFACE=a#b\nnot a line\nCONTRACT_TIME="60\n', "n.conf")
    assert values["DEFAULT_PRICE"].value == "0.25"
    assert values["NETWORK_INTERFACE"].value == "eth0"
    assert values["ACCOUNT_ID"].value == "wallet #1"      # '#' inside quotes is data
    assert values["LINK_INTERFACE"].value == "a#b"        # '#' without a space before it too
    assert values["CONTRACT_TIME"].value == "60"
    assert any("n.conf:7: not a KEY=VALUE line" in n for n in notes)
    assert any("n.conf:8: CONTRACT_TIME: no closing" in n for n in notes)


def test_repeated_key_last_wins_with_note():
    values, notes = ci.parse_seed("DEFAULT_PRICE=1\nDEFAULT_PRICE=2\n", "n.conf")
    assert values["DEFAULT_PRICE"].value == "2"
    assert any("n.conf:2: DEFAULT_PRICE set again (first on line 1)" in n for n in notes)


def test_unknown_keys_are_noted_not_dropped(tmp_path):
    toml_text, notes = ci.convert("DEFAULT_PRICE=1\nNETWORK_INTERFACE=eth0\nMAX_PEERS=5\n", "gateway", "n.conf")
    assert any("n.conf:3: MAX_PEERS=5 → unknown key" in n for n in notes)
    load_text(tmp_path, toml_text)


def test_missing_keys_get_defaults_with_notes(tmp_path):
    toml_text, notes = ci.convert("NETWORK_INTERFACE=eth0\n", "gateway", "n.conf")
    cfg = load_text(tmp_path, toml_text)
    assert cfg.pricing.default_price == parse_price(config.DEFAULT_PRICE)
    assert (cfg.pricing.contract_kb, cfg.pricing.contract_time_s) == (10_000, 3600)
    assert cfg.payment.backend == "dummy"
    text = "\n".join(notes)
    for key in ("DEFAULT_PRICE", "CONTRACT_DATA", "CONTRACT_TIME", "LINK_INTERFACE"):
        assert f"{key} not set →" in text, key
    assert "WARNING: PAYMENT_INTERFACE not set" in text
    toml_text, notes = ci.convert("", "client", "n.conf")
    cfg = load_text(tmp_path, fill_client(toml_text))
    assert cfg.policy.max_price == parse_price(config.DEFAULT_MAX_PRICE)
    assert cfg.policy.data_renewal_kb == 1000 and cfg.policy.time_renewal_s == 60
    assert "DATA_RENEWAL not set" in "\n".join(notes)


def test_gateway_without_network_interface_has_a_placeholder_that_load_names(tmp_path):
    toml_text, notes = ci.convert("DEFAULT_PRICE=1\n", "gateway", "n.conf")
    with pytest.raises(config.ConfigError, match="network.upstream_interface"):
        load_text(tmp_path, toml_text)
    assert any("to do before `tunnelgate serve`: [network] upstream_interface" in n for n in notes)
    cfg = load_text(tmp_path, toml_text.replace(ci.PH_UPSTREAM, "eth0"))
    assert cfg.upstream_interface == "eth0"


@pytest.mark.parametrize("name,backend", [("cashu", "cashu"), ("eCash", "cashu"), ("bitcoin", "bitcoind"),
                                          ("bitcoind", "bitcoind"), ("dummy", "dummy")])
def test_payment_interface_names(name, backend):
    toml_text, notes = ci.convert(f"PAYMENT_INTERFACE={name}\n", "gateway", "n.conf")
    assert tomllib.loads(toml_text)["payment"]["backend"] == backend
    assert any(f"PAYMENT_INTERFACE={name} → [payment] backend = \"{backend}\"" in n for n in notes)


def test_unknown_payment_interface_becomes_dummy_with_warning(tmp_path):
    toml_text, notes = ci.convert("PAYMENT_INTERFACE=zebrapay\nACCOUNT_ID=acct1\nNETWORK_INTERFACE=eth0\n",
                                  "gateway", "n.conf")
    assert tomllib.loads(toml_text)["payment"] == {"backend": "dummy"}
    text = "\n".join(notes)
    assert "WARNING: PAYMENT_INTERFACE=zebrapay → no such backend" in text
    assert "ACCOUNT_ID=acct1 → no equivalent with the dummy backend" in text
    load_text(tmp_path, toml_text)


def test_bitcoind_account_is_the_wallet_name(tmp_path):
    seed = "PAYMENT_INTERFACE=bitcoin\nACCOUNT_ID=gw wallet\nNETWORK_INTERFACE=eth0\n"
    toml_text, notes = ci.convert(seed, "gateway", "n.conf")
    url = tomllib.loads(toml_text)["payment"]["rpc_url"]
    assert url.endswith("/wallet/gw%20wallet") and url.startswith("REPLACE-with-")
    with pytest.raises(config.ConfigError, match="payment.rpc_url"):
        load_text(tmp_path, toml_text)
    cfg = load_text(tmp_path, toml_text.replace("REPLACE-with-http://USER:PASS@", "http://u:p@"))
    assert cfg.payment.settings_dict() == {"rpc_url": "http://u:p@127.0.0.1:8332/wallet/gw%20wallet",
                                           "min_confirmations": 1}
    assert any("ACCOUNT_ID=gw wallet → the Bitcoin Core wallet's name" in n for n in notes)


def test_bitcoind_account_url_and_address(tmp_path):
    url = "http://u:secret@127.0.0.1:18443/wallet/c"
    toml_text, notes = ci.convert(f"PAYMENT_INTERFACE=btc\nACCOUNT_ID={url}\n", "client", "n.conf")
    cfg = load_text(tmp_path, fill_client(toml_text))
    assert cfg.payment.settings_dict() == {"rpc_url": url}
    assert not any("secret" in n for n in notes)
    toml_text, notes = ci.convert("PAYMENT_INTERFACE=btc\nACCOUNT_ID=bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080\n",
                                  "gateway", "n.conf")
    assert tomllib.loads(toml_text)["payment"]["rpc_url"] == ci.PH_RPC_URL
    assert any("looks like a bitcoin address" in n for n in notes)


def test_cashu_account_that_is_not_a_url(tmp_path):
    toml_text, notes = ci.convert("PAYMENT_INTERFACE=cashu\nACCOUNT_ID=alice\nNETWORK_INTERFACE=eth0\n",
                                  "gateway", "n.conf")
    with pytest.raises(config.ConfigError, match="payment.mints"):
        load_text(tmp_path, toml_text)
    assert any("ACCOUNT_ID=alice → not a mint URL" in n for n in notes)
    cfg = load_text(tmp_path, toml_text.replace(ci.PH_MINT_URL, "http://127.0.0.1:3338"))
    assert cfg.payment.get("mints") == ("http://127.0.0.1:3338",)


@pytest.mark.parametrize("value,kb,rounded", [("10000000", 10_000, False), ("10MB", 10_000, False),
                                              ("500KB", 500, False), ("1MiB", 1049, True),
                                              ("1500", 2, True), ("1.5 GB", 1_500_000, False)])
def test_sizes(value, kb, rounded):
    assert ci.bytes_to_kb(value, "x") == (kb, rounded)


@pytest.mark.parametrize("value,s", [("3600", 3600), ("60m", 3600), ("1h", 3600), ("1d", 86400),
                                     ("90 s", 90), ("1.5", 2)])
def test_durations(value, s):
    assert ci.seconds(value, "x")[0] == s


@pytest.mark.parametrize("seed,words", [
    ("DEFAULT_PRICE=cheap", ["n.conf:1: DEFAULT_PRICE", "msat per KB"]),
    ("DEFAULT_PRICE=0.0000001", ["n.conf:1: DEFAULT_PRICE", "decimals"]),
    ("\nCONTRACT_DATA=lots", ["n.conf:2: CONTRACT_DATA", "size in kilobytes"]),
    ("CONTRACT_DATA=10 parsecs", ["CONTRACT_DATA", "size in kilobytes"]),
    ("GRACE_PERIOD_TIME=soon", ["GRACE_PERIOD_TIME", "duration in seconds"]),
    ("PAYMENT_AMOUNT=1e3", ["PAYMENT_AMOUNT", "whole number of satoshis"]),
    ("CONTRACT_DATA=0", ["CONTRACT_DATA", "above 0"]),
    ("CONTRACT_TIME=soon", ["CONTRACT_TIME", "duration in seconds"]),
])
def test_bad_values_raise_naming_file_line_and_key(seed, words):
    with pytest.raises(ci.ConfigImportError) as e:
        ci.convert(seed, "gateway", "n.conf")
    for w in words:
        assert w in str(e.value)


def test_role_guess():
    assert "converted as a gateway (from the keys" in "\n".join(ci.convert("CONTRACT_DATA=1000", None, "n")[1])
    text, notes = ci.convert("DATA_RENEWAL=1000", None, "n")
    assert "[policy]" in text and any("converted as a client" in n for n in notes)
    text, notes = ci.convert(SEED, None, "n")
    assert "[pricing]" in text and any("pass --role client" in n for n in notes)


def test_strange_values_still_make_valid_toml(tmp_path):
    toml_text, _ = ci.convert('NETWORK_INTERFACE="a\\"b"\nLINK_INTERFACE=x\x7fy\nACCOUNT_ID=\t"q\\\n', "gateway", "n")
    tomllib.loads(toml_text)


# --- the command -------------------------------------------------------------------------------

def test_cli_prints_toml_on_stdout_notes_on_stderr(tmp_path):
    seed = tmp_path / "net.conf"
    seed.write_text(SEED)
    r = CliRunner().invoke(config_group, ["import", str(seed), "--role", "gateway"])
    assert r.exit_code == 0, r.output
    assert tomllib.loads(r.stdout)["pricing"]["default_price"] == "10"
    assert "DEFAULT_PRICE=10 →" in r.stderr and "DEFAULT_PRICE" not in r.stdout.split("[pricing]")[0]


def test_cli_writes_out_and_refuses_to_overwrite(tmp_path):
    seed = tmp_path / "net.conf"
    seed.write_text(SEED)
    out = tmp_path / "client.toml"
    r = CliRunner().invoke(config_group, ["import", str(seed), "--role", "client", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert r.stdout == "" and f"wrote {out}" in r.stderr
    out.write_text(fill_client(out.read_text()))
    assert config.load(out).role == "client"
    before = out.read_text()
    r = CliRunner().invoke(config_group, ["import", str(seed), "-o", str(out)])
    assert r.exit_code == 1 and "refusing to overwrite" in r.stderr
    assert out.read_text() == before


def test_cli_out_with_rpc_password_is_private(tmp_path):
    seed = tmp_path / "net.conf"
    seed.write_text("PAYMENT_INTERFACE=bitcoind\nACCOUNT_ID=http://u:p@127.0.0.1:8332/wallet/g\n")
    out = tmp_path / "g.toml"
    r = CliRunner().invoke(config_group, ["import", str(seed), "--role", "gateway", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600


def test_cli_errors(tmp_path):
    r = CliRunner().invoke(config_group, ["import", str(tmp_path / "missing.conf")])
    assert r.exit_code == 1 and "cannot read" in r.stderr
    seed = tmp_path / "net.conf"
    seed.write_text("DEFAULT_PRICE=free\n")
    r = CliRunner().invoke(config_group, ["import", str(seed)])
    assert r.exit_code == 2 and "net.conf:1: DEFAULT_PRICE" in r.stderr
    r = CliRunner().invoke(config_group, ["import", str(seed), "--role", "router"])
    assert r.exit_code == 2


# The original project's own net.conf files, verbatim, from github.com/Antiklos/network-gatekeeper:
# the shipped one at its last commit (d725b67, "Merge pull request #9"; unchanged since fe1e53e,
# 2016-12-18), and the one of d85482c ("Make account id configurable", 2016-09-06), the last with
# NGP_INTERFACE and GRACE_PERIOD_PRICE. Their meaning comes from the same repository: main.c's
# read_config, main.h's module identifiers and the README ("ACCOUNT_ID: The bitcoin address that
# will receive payment", "IGNORE_INTERFACE: The upstream interface of the server", "make sure
# NGP_INTERFACE is the ip address of your server", "Change the PAYMENT_INTERFACE ... to 2" for
# Electrum).
ORIGINAL_SHIPPED = """\
LINK_INTERFACE=1
NETWORK_INTERFACE=1
PAYMENT_INTERFACE=1
ACCOUNT_ID=dummy_id
DEFAULT_PRICE=5
CONTRACT_DATA=1
CONTRACT_TIME=60
PAYMENT_AMOUNT=1000
DATA_RENEWAL=0
TIME_RENEWAL=5
IGNORE_INTERFACE=eth1

"""
ORIGINAL_2016_09 = """\
LINK_INTERFACE=1
NETWORK_INTERFACE=1
PAYMENT_INTERFACE=1
NGP_INTERFACE=192.168.50.10
ACCOUNT_ID=dummy_id
DEFAULT_PRICE=5
GRACE_PERIOD_PRICE=100
CONTRACT_DATA=10
CONTRACT_TIME=60
DATA_RENEWAL=2048
TIME_RENEWAL=5
"""


def test_original_shipped_net_conf_as_a_gateway(tmp_path):
    toml_text, notes = ci.convert(ORIGINAL_SHIPPED, "gateway", "net.conf")
    cfg = load_text(tmp_path, toml_text)             # no placeholder left: it loads as is
    assert cfg.upstream_interface == "eth1"          # IGNORE_INTERFACE, not NETWORK_INTERFACE=1
    assert cfg.payment.backend == "dummy"            # PAYMENT_INTERFACE=1: simulated payments
    assert cfg.pricing.contract_kb == 2              # 1 KiB = 1024 bytes → 2 KB, rounded up
    assert cfg.pricing.contract_time_s == 60
    text = "\n".join(notes)
    assert "LINK_INTERFACE=1 → picked the UDP link module in the original" in text
    assert "NETWORK_INTERFACE=1 → picked IPv4 gating in the original" in text
    assert 'PAYMENT_INTERFACE=1 → the original\'s simulated payments → [payment] backend = "dummy"' in text
    assert 'IGNORE_INTERFACE=eth1 → [network] upstream_interface = "eth1"' in text
    assert "PAYMENT_AMOUNT=1000 → no equivalent on a gateway with the dummy backend" in text
    assert "unknown key" not in text
    assert 'upstream_interface = "1"' not in toml_text


def test_original_shipped_net_conf_with_electrum_as_its_readme_says(tmp_path):
    # the README's steps for real payments: PAYMENT_INTERFACE=2 and ACCOUNT_ID = your address
    addr = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
    seed = ORIGINAL_SHIPPED.replace("PAYMENT_INTERFACE=1", "PAYMENT_INTERFACE=2").replace("dummy_id", addr)
    gw_text, gw_notes = ci.convert(seed, "gateway", "net.conf")
    gw = load_text(tmp_path, gw_text)
    assert gw.payment.backend == "electrum"
    assert gw.payment.settings_dict() == {"electrum_dir": str(Path("~/.electrum").expanduser()),
                                          "method": "lightning", "invoice_msat": 1_000_000}
    assert f"# ACCOUNT_ID was {addr}" in gw_text
    text = "\n".join(gw_notes)
    assert 'PAYMENT_INTERFACE=2 → the original\'s Electrum → [payment] backend = "electrum"' in text
    assert f"ACCOUNT_ID={addr} → the on-chain receiving address" in text
    assert "PAYMENT_AMOUNT=1000 → [payment] invoice_msat = 1000000" in text
    cl_text, cl_notes = ci.convert(seed, "client", "net.conf")
    cl = load_text(tmp_path, fill_client(cl_text))
    assert cl.payment.backend == "electrum" and cl.payment.prepay_msat == 1_000_000
    assert "IGNORE_INTERFACE=eth1 → no equivalent on a client" in "\n".join(cl_notes)


def test_original_2016_net_conf_ngp_interface_and_grace(tmp_path):
    cl_text, cl_notes = ci.convert(ORIGINAL_2016_09, "client", "net.conf")
    assert tomllib.loads(cl_text)["gateway"]["endpoint"] == "192.168.50.10:51900"    # NGP_INTERFACE
    cl = load_text(tmp_path, cl_text.replace(ci.PH_PUBLIC_KEY, KEY))                 # only the key to fill
    assert cl.endpoint == ("192.168.50.10", 51900)
    assert cl.policy.data_renewal_kb == 3                                            # 2048 bytes
    gw_text, gw_notes = ci.convert(ORIGINAL_2016_09, "gateway", "net.conf")
    pricing = tomllib.loads(gw_text)["pricing"]
    # grace data = GRACE_PERIOD_PRICE / DEFAULT_PRICE = 20 KiB = 20.48 KB → 21
    assert pricing["grace_kb"] == 21 and pricing["contract_kb"] == 11
    assert tomllib.loads(gw_text)["link"]["listen"] == "192.168.50.10:51900"
    text = "\n".join(gw_notes)
    assert "GRACE_PERIOD_PRICE=100 → [pricing] grace_kb = 21" in text
    assert "unknown key" not in text + "\n".join(cl_notes)
    g = ci.convert("GRACE_PERIOD_TIME=15\nIGNORE_INTERFACE=eth1\n", "gateway", "n.conf")[0]
    assert tomllib.loads(g)["pricing"]["grace_time_s"] == 15
