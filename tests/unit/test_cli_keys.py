import os
import stat

from click.testing import CliRunner

from tunnelgate.cli import main
from tunnelgate import keys


def test_keygen_writes_0600_and_pubkey_matches(tmp_path):
    out = tmp_path / "k"
    r = CliRunner().invoke(main, ["keygen", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    pub = r.output.strip()
    r2 = CliRunner().invoke(main, ["pubkey", str(out)])
    assert r2.exit_code == 0 and r2.output.strip() == pub
    assert keys.b64(keys.public_of(keys.read_private(out))) == pub


def test_keygen_refuses_to_overwrite(tmp_path):
    out = tmp_path / "k"
    CliRunner().invoke(main, ["keygen", "--out", str(out)])
    r = CliRunner().invoke(main, ["keygen", "--out", str(out)])
    assert r.exit_code == 1 and "already exists" in r.output


def test_pubkey_errors_say_what_to_do(tmp_path):
    r = CliRunner().invoke(main, ["pubkey", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "tunnelgate keygen" in r.output
    bad = tmp_path / "bad"
    bad.write_text("hello\n")
    os.chmod(bad, 0o600)
    r = CliRunner().invoke(main, ["pubkey", str(bad)])
    assert r.exit_code == 1 and "not a tunnelgate private key" in r.output
    k = tmp_path / "open"
    keys.write_private(k, keys.generate())
    os.chmod(k, 0o644)
    r = CliRunner().invoke(main, ["pubkey", str(k)])
    assert r.exit_code == 1 and "chmod 600" in r.output


def test_status_of_config_with_no_daemon(tmp_path):
    key = keys.b64(keys.public_of(keys.generate()))
    c = tmp_path / "c.toml"
    c.write_text(f'[node]\nprivate_key_file="k"\nstate_dir="s"\n[gateway]\nendpoint="198.18.1.1:1"\n'
                 f'public_key="{key}"\n[network]\n')
    r = CliRunner().invoke(main, ["status", "-c", str(c)])
    assert r.exit_code == 3 and "not running" in r.output and "tunnelgate up" in r.output


def test_keygen_without_out_prints_the_private_key_and_says_so():
    r = CliRunner().invoke(main, ["keygen"])
    assert r.exit_code == 0, r.output
    private = keys.decode_key(r.stdout)
    assert len(private) == 32
    help_text = " ".join(CliRunner().invoke(main, ["keygen", "--help"]).output.split())
    assert "PRIVATE key itself" in help_text and "PUBLIC key" in help_text


def test_tui_without_a_terminal_refuses_with_a_clear_line(tmp_path):
    conf = tmp_path / "client.toml"
    conf.write_text("")        # never read: the terminal is checked first
    r = CliRunner().invoke(main, ["tui", "-c", str(conf)])
    assert r.exit_code == 2
    assert "needs a terminal" in r.stderr and "status" in r.stderr
