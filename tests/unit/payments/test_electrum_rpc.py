"""The electrum backend's parts a real daemon cannot be made to show on demand: how each of
Electrum's error answers becomes one line saying what to do (a fake JSON-RPC server on
127.0.0.1 answers exactly what Electrum 4.3.4 answers), and the offline pieces (accounts, txid,
config file, the Lightning proof check). The real daemons are in
tests/integration/test_payments_electrum.py."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tunnelgate.payments import PaymentError, Terms, load_backend
from tunnelgate.payments.electrum import parse_account, rpc_url_from_dir, txid_of
from tunnelgate.protocol import messages as m

GENESIS_TX = (
    "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04ffff001d"
    "0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f66"
    "207365636f6e64206261696c6f757420666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0fe55"
    "48271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba"
    "0b8d578a4c702b6bf11d5fac00000000")
GENESIS_TXID = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
INVOICE = "lnbcrt20n1" + "q" * 440          # the length of a real one with a route hint


class FakeElectrum:
    """Answers JSON-RPC like Electrum's daemon: ``answers[method]`` is a result, or an
    Exception whose text becomes {"error": {"code": 1, "message": ...}}; 401 without auth."""

    def __init__(self, answers: dict, user="u", password="secret-pw"):
        self.answers, self.calls = answers, []
        auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        fake = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.headers.get("Authorization") != auth:
                    self.send_response(401)
                    self.end_headers()
                    return
                fake.calls.append((body["method"], body["params"]))
                a = fake.answers.get(body["method"])
                out = {"id": body["id"], "jsonrpc": "2.0"}
                if isinstance(a, Exception):
                    out["error"] = {"code": 1, "message": str(a)}
                else:
                    out["result"] = a
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass
        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        self.url = f"http://{user}:{password}@127.0.0.1:{self.port}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def fake():
    made = []

    def make(answers, **kw):
        f = FakeElectrum(answers, **kw)
        made.append(f)
        return f
    yield make
    for f in made:
        f.close()


def run(coro):
    return asyncio.run(coro)


def pay_error(url, account, amount=2000) -> str:
    with pytest.raises(PaymentError) as e:
        run(load_backend("electrum", {"rpc_url": url}).pay(Terms("c1", amount, account=account)))
    assert "\n" not in str(e.value)
    return str(e.value)


DECODED = {"amount_msat": 2000, "pubkey": "02" + "ab" * 32, "rhash": "00" * 32}


def chan(**kw):
    return {"type": "CHANNEL", "remote_pubkey": "02" + "ab" * 32, "state": "OPEN", "peer_state": "GOOD",
            "local_balance": 100_000, "local_reserve": 1000, **kw}


@pytest.mark.parametrize("channels,words", [
    ([], "no route: no channel to the gateway's Lightning node"),
    ([chan(peer_state="DISCONNECTED")], "the gateway's Lightning node is not connected"),
    ([chan(state="OPENING")], "not OPEN yet"),
    ([chan(local_balance=1000)], "no channel capacity: 0 msat spendable"),
    ([chan()], "the Lightning payment failed (TEMPORARY_CHANNEL_FAILURE)"),
])
def test_lightning_failure_says_why(fake, channels, words):
    f = fake({"decode_invoice": DECODED, "list_channels": channels,
              "lnpay": {"success": False, "preimage": None, "log": [["1", "1x1x1", "TEMPORARY_CHANNEL_FAILURE"]]}})
    assert words in pay_error(f.url, "lightning:" + INVOICE)


@pytest.mark.parametrize("method,message,words", [
    ("payto", "Insufficient funds", "insufficient funds in the wallet"),
    ("payto", "wallet not loaded", "no wallet is loaded in the daemon"),
    ("payto", "Password required", "is locked"),
    ("lnpay", "Lightning not enabled in this wallet", "has no Lightning"),
    ("lnpay", "This invoice has expired", "invoice has expired"),
])
def test_electrum_errors_become_one_line_with_what_to_do(fake, method, message, words):
    f = fake({"decode_invoice": DECODED, method: Exception(message)})
    account = "lightning:" + INVOICE if method == "lnpay" else "bitcoin:bcrt1qxyz"
    msg = pay_error(f.url, account)
    assert words in msg and msg.startswith("electrum")


def test_daemon_not_running_and_bad_password_never_show_the_password(fake):
    f = fake({})
    port = f.port
    msg = pay_error(f"http://u:wrong-one@127.0.0.1:{port}", "bitcoin:bcrt1qxyz")
    assert "refused the RPC user/password" in msg and "wrong-one" not in msg
    f.close()
    msg = pay_error(f"http://u:secret-pw@127.0.0.1:{port}", "bitcoin:bcrt1qxyz")
    assert "not running or not reachable" in msg and "secret-pw" not in msg


def test_invoice_bigger_than_the_clients_limit_is_not_paid(fake):
    f = fake({"decode_invoice": {**DECODED, "amount_msat": 5_000_000}})
    assert "max_invoice_msat" in pay_error(f.url, "lightning:" + INVOICE)
    assert [c[0] for c in f.calls] == ["decode_invoice"]            # lnpay never called


def test_invoice_paid_before_a_restart_gives_back_its_preimage(fake):
    pre = "77" * 32
    f = fake({"decode_invoice": {**DECODED, "rhash": hashlib.sha256(bytes.fromhex(pre)).hexdigest()},
              "lnpay": Exception("This invoice has been paid already"),
              "lightning_history": [{"payment_hash": hashlib.sha256(bytes.fromhex(pre)).hexdigest(),
                                     "preimage": pre}]})
    proof = run(load_backend("electrum", {"rpc_url": f.url}).pay(Terms("c1", 2000, account="lightning:" + INVOICE)))
    assert proof == "ln:" + pre


def test_gateway_without_inbound_capacity_says_so(fake, tmp_path):
    f = fake({"add_request": {"lightning_invoice": INVOICE, "rhash": "00" * 32, "can_receive": False}})
    gw = load_backend("electrum", {"rpc_url": f.url}, role="payee", journal=tmp_path / "j")
    with pytest.raises(PaymentError, match="inbound capacity: a client must open a channel"):
        run(gw.account_for("c1"))


def test_lightning_proof_checked_from_the_journal(fake, tmp_path):
    pre = bytes(range(32))
    rhash = hashlib.sha256(pre).hexdigest()
    f = fake({"add_request": {"lightning_invoice": INVOICE, "rhash": rhash, "can_receive": True}})
    gw = load_backend("electrum", {"rpc_url": f.url, "invoice_msat": 3000}, role="payee", journal=tmp_path / "j")
    account = run(gw.account_for("c1"))
    f.close()                          # the daemon is gone: the journal still knows the invoice
    assert run(gw.verify("ln:" + pre.hex(), Terms("c2", 2000, account=account))).status == "invalid"
    under = run(gw.verify("ln:" + pre.hex(), Terms("c1", 5000, account=account)))
    assert under.status == "invalid" and "underpaid" in under.reason
    v = run(gw.verify("ln:" + pre.hex(), Terms("c1", 2000, peer="p", account=account)))
    assert (v.status, v.amount_msat) == ("confirmed", 3000)
    assert run(gw.verify("ln:" + pre.hex(), Terms("c1", 2000, peer="p", account=account))).status == "confirmed"
    assert len(gw.journal.records()) == 1


def test_onchain_account_carries_the_minimum_and_the_payer_pays_at_least_it(fake, tmp_path):
    f = fake({"createnewaddress": "bcrt1qaddr", "payto": "00"})
    gw = load_backend("electrum", {"rpc_url": f.url, "method": "onchain", "onchain_min_msat": 20_000_000},
                      role="payee", journal=tmp_path / "j")
    account = run(gw.account_for("c1"))
    assert account == "bitcoin:bcrt1qaddr?amount=0.00020000"
    assert parse_account(account) == ("onchain", "bcrt1qaddr", 20_000)
    assert run(load_backend("electrum", {"rpc_url": f.url}).pay(Terms("c1", 2000, account=account))) == "tx:00"
    assert f.calls[-1][1]["amount"] == "0.00020000" and f.calls[-1][1]["addtransaction"] is True


def test_txid_ignores_the_witness():
    assert txid_of(bytes.fromhex(GENESIS_TX)) == GENESIS_TXID
    raw = bytes.fromhex(GENESIS_TX)
    # the same transaction with a segwit marker/flag and one witness item for its input
    segwit = raw[:4] + b"\x00\x01" + raw[4:-4] + b"\x01\x03abc" + raw[-4:]
    assert txid_of(segwit) == GENESIS_TXID


def test_rpc_settings_from_the_electrum_data_dir(tmp_path):
    (tmp_path / "regtest").mkdir()
    (tmp_path / "regtest/config").write_text(json.dumps(
        {"rpcuser": "user", "rpcpassword": "p@ss/word", "rpcport": 7777}))
    assert rpc_url_from_dir(tmp_path) == "http://user:p%40ss%2Fword@127.0.0.1:7777"
    (tmp_path / "regtest/config").write_text(json.dumps({"rpcuser": "user"}))
    with pytest.raises(PaymentError, match="no rpcuser/rpcpassword/rpcport"):
        rpc_url_from_dir(tmp_path)
    with pytest.raises(PaymentError, match="needs payment.rpc_url"):
        load_backend("electrum", {})


def test_propose_carries_a_bolt11_invoice():
    p = m.Propose("c1", "198.18.2.7/32", 250_000, 1000, 600, ("electrum",), "lightning:" + INVOICE, 1, 30, 100)
    assert m.decode(m.encode(p)).account == "lightning:" + INVOICE


def test_gateway_pool_never_proposes_an_invoice_past_half_its_life(tmp_path):
    """An idle gateway's pooled invoices age: one older than half its expiry is dropped, not
    proposed (the client could not pay it before it expires)."""
    import time
    from tunnelgate.daemon.gateway import AccountPool
    from tunnelgate.payments import Journal
    from tunnelgate.payments.electrum import ElectrumPayee
    gw = ElectrumPayee({"rpc_url": "http://u:p@127.0.0.1:9", "invoice_expiry_s": 600}, Journal(tmp_path / "j"))
    assert gw.account_max_age_s == 300
    loop = asyncio.new_event_loop()
    try:
        pool = AccountPool(gw, loop)
        now = time.monotonic()
        pool.ready.extend([("t1", "lightning:old", now - 301), ("t2", "lightning:fresh", now - 10)])
        assert pool.take("c1") == "lightning:fresh"
        assert gw.journal.account("c1", "electrum") == "lightning:fresh"
        assert pool.take("c2") is None            # nothing fresh left: proposed on the next try
    finally:
        loop.close()
