"""The ``electrum`` backend: Lightning first, on-chain as a fallback, through a local
Electrum 4 daemon's JSON-RPC (what a router or a Raspberry Pi can run: no full node).

Settings (both sides): ``rpc_url`` = ``http://USER:PASS@127.0.0.1:PORT``, or
``electrum_dir`` = the daemon's data directory (its ``config`` file, or the one under
``regtest/``, ``testnet/``, ``signet/``, gives rpcuser/rpcpassword/rpcport/rpchost);
``wallet`` (path of the wallet in the daemon, when it has several), ``rpc_timeout_s`` (30).

Gateway (payee): ``method`` = ``"lightning"`` (default) or ``"onchain"``;
``invoice_msat``: what one Lightning invoice asks (default 1 000 000 msat = 1000 sat): a
prepaid top-up, the part beyond the contract's cost stays as the client's credit and pays
its next contracts; ``invoice_expiry_s`` (default 86400; an invoice is proposed only in the
first half of its life, so keep it well above the grace);
``min_confirmations`` (on-chain, default 1; 0 = accepted once in the mempool, only up to
``zeroconf_max_msat``, default 0: no 0-conf unless set); ``onchain_min_msat``: the smallest
on-chain payment taken (default: ten times the fee of a typical payment at
``fee_rate_sat_vb``), advertised in the address as BIP21 ``?amount=``.
Client (payer): ``max_invoice_msat`` (default 1 000 000 msat): the largest Lightning
invoice paid for one contract (a gateway cannot ask more than this as a top-up);
``fee_rate_sat_vb`` (on-chain fee rate, default 2); ``onchain_min_msat`` (as above, for quotes).

Accounts advertised in PROPOSE: ``lightning:<BOLT11>`` or ``bitcoin:<address>?amount=<BTC>``.
Proofs sent in PAY: ``ln:<preimage hex>`` (the preimage is released only when the payment
settles, so it proves the payment; the gateway checks it against the invoice it issued for
that contract, from its journal, even while its daemon is down), or ``tx:<raw tx hex>``
(signed, not broadcast: the gateway checks the output to the contract's address, records it,
broadcasts it and waits for the confirmations it wants).

No wallet password or seed is read, logged or stored: the daemon holds the wallet; the RPC
password is never shown in messages (only host:port).
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping

from .base import (Journal, PayeeBackend, PayerBackend, PaymentError, Terms, Verdict, msat_to_sat_ceil,
                   proof_key, to_thread)

log = logging.getLogger("tunnelgate.payments.electrum")
COIN = Decimal(100_000_000)
TYPICAL_VSIZE = 141          # 1 P2WPKH input, 2 outputs
DEFAULT_FEE_RATE = Decimal(2)
DEFAULT_INVOICE_MSAT = 1_000_000
DEFAULT_MAX_INVOICE_MSAT = 1_000_000
DEFAULT_EXPIRY_S = 86_400
LN_SETTLE_S = 2              # a direct channel: an HTLC settles in well under a second
BLOCK_S = 600
PR_PAID = 3                  # Electrum's invoice status "Paid"


def sat_to_btc(sat: int) -> str:
    return str((Decimal(int(sat)) / COIN).quantize(Decimal("0.00000001")))


def onchain_fee_sat(rate: Decimal) -> int:
    return int((rate * TYPICAL_VSIZE).to_integral_value(rounding="ROUND_CEILING"))


class RPCError(PaymentError):
    """``unreachable``: the daemon did not answer (nothing happened, try again later)."""

    def __init__(self, msg: str, unreachable: bool = False) -> None:
        super().__init__(msg)
        self.unreachable = unreachable


def explain(method: str, message: str, where: str) -> str:
    """Electrum's error text → one line saying what is wrong and what to do."""
    low = message.lower()
    if "wallet not loaded" in low:
        return (f"electrum: no wallet is loaded in the daemon at {where}; load it: "
                "electrum load_wallet [-w WALLET] (or set payment.wallet)")
    if "password required" in low or "incorrect password" in low or "invalidpassword" in low:
        return (f"electrum: the wallet at {where} is locked (it has a password and {method} needs it); "
                "tunnelgate never stores wallet passwords: use a wallet without one for this node's "
                "payments, or pay by hand")
    if "insufficient funds" in low or "notenoughfunds" in low:
        return (f"electrum: insufficient funds in the wallet at {where} for {method}; send coins to "
                "it (electrum getunusedaddress) or open a bigger channel")
    if "no path found" in low or "no route" in low or "not enough" in low and "capacity" in low:
        return (f"electrum: no route / no channel capacity to the gateway ({message}); open a channel "
                "to the gateway's node with enough capacity: electrum open_channel NODEID AMOUNT")
    if "lightning not enabled" in low:
        return (f"electrum: the wallet at {where} has no Lightning (an old seed type); create a new "
                "wallet (electrum create) for Lightning, or use payment.method = \"onchain\"")
    if "expired" in low:
        return f"electrum: the gateway's invoice has expired ({message}); it proposes a new one next time"
    return f"electrum {method}: {message}"


class RPC:
    """Blocking JSON-RPC over HTTP with basic auth, one request per connection; ``call``
    runs it off the event loop."""

    def __init__(self, url: str, timeout: float = 30, wallet: str | None = None) -> None:
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname or not u.port:
            raise PaymentError("electrum: payment.rpc_url must be http://USER:PASS@HOST:PORT")
        self.endpoint = f"{u.scheme}://{u.hostname}:{u.port}/"
        self.where = f"{u.hostname}:{u.port}"     # never the password
        self.auth = "Basic " + base64.b64encode(
            f"{urllib.parse.unquote(u.username or '')}:{urllib.parse.unquote(u.password or '')}".encode()).decode()
        self.timeout = timeout
        self.wallet = wallet
        self._id = 0

    def call_sync(self, method: str, wallet: bool = False, timeout: float | None = None, **params: Any) -> Any:
        if wallet and self.wallet:
            params["wallet"] = self.wallet
        self._id += 1
        body = json.dumps({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params}).encode()
        req = urllib.request.Request(self.endpoint, data=body,
                                     headers={"Content-Type": "application/json", "Authorization": self.auth})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                out = json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise RPCError(f"electrum: the daemon at {self.where} refused the RPC user/password; check "
                               "payment.rpc_url (or the rpcuser/rpcpassword in payment.electrum_dir's config)"
                               ) from None
            raise RPCError(f"electrum {method}: HTTP {e.code} from {self.where}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RPCError(f"electrum: the daemon at {self.where} is not running or not reachable ({reason}); "
                           "start it: electrum daemon -d && electrum load_wallet", unreachable=True) from None
        except ValueError as e:
            raise RPCError(f"electrum {method}: the answer from {self.where} is not JSON ({e})") from None
        err = out.get("error")
        if err:
            raise RPCError(explain(method, str(err.get("message", err)), self.where))
        return out.get("result")

    async def call(self, method: str, wallet: bool = False, timeout: float | None = None, **params: Any) -> Any:
        return await to_thread(self.call_sync, method, wallet, timeout, **params)


def rpc_url_from_dir(directory: str | os.PathLike) -> str:
    """The RPC URL from an Electrum data directory's config file (JSON)."""
    d = Path(directory).expanduser()
    for c in (d / "config", d / "regtest/config", d / "testnet/config", d / "signet/config"):
        if c.is_file():
            try:
                conf = json.loads(c.read_text())
            except (OSError, ValueError) as e:
                raise PaymentError(f"electrum: cannot read {c}: {e}") from None
            user, pw, port = conf.get("rpcuser"), conf.get("rpcpassword"), conf.get("rpcport")
            if not (user and pw and port):
                raise PaymentError(f"electrum: {c} has no rpcuser/rpcpassword/rpcport; set them: electrum "
                                   "setconfig rpcport 7777 (and rpcuser, rpcpassword), then restart the daemon")
            host = conf.get("rpchost") or "127.0.0.1"
            return (f"http://{urllib.parse.quote(str(user), safe='')}:{urllib.parse.quote(str(pw), safe='')}"
                    f"@{host}:{int(port)}")
    raise PaymentError(f"electrum: no Electrum config file in {d} (looked for config, regtest/config, "
                       "testnet/config, signet/config); point payment.electrum_dir at the daemon's -D directory")


def rpc_from(settings: Mapping[str, Any]) -> RPC:
    url = settings.get("rpc_url")
    if not url and settings.get("electrum_dir"):
        url = rpc_url_from_dir(settings["electrum_dir"])
    if not url:
        raise PaymentError("payment backend 'electrum' needs payment.rpc_url (http://USER:PASS@HOST:PORT) "
                           "or payment.electrum_dir (the daemon's data directory)")
    return RPC(str(url), float(settings.get("rpc_timeout_s", 30)), settings.get("wallet") or None)


def parse_account(account: str) -> tuple[str, str, int]:
    """(kind, target, minimum sat): ("lightning", invoice, 0) or ("onchain", address, min sat)."""
    a = account.strip()
    if a.lower().startswith("lightning:"):
        return "lightning", a.split(":", 1)[1], 0
    if a.lower().startswith("bitcoin:"):
        u = urllib.parse.urlsplit(a)
        addr = a.split(":", 1)[1].split("?", 1)[0]
        q = urllib.parse.parse_qs(u.query)
        amount = q.get("amount", ["0"])[0]
        try:
            min_sat = int((Decimal(amount) * COIN).to_integral_value(rounding="ROUND_CEILING"))
        except ArithmeticError:
            raise PaymentError(f"electrum: the gateway's address {a!r} has a bad amount") from None
        return "onchain", addr, min_sat
    raise PaymentError(f"electrum: the gateway advertised {a[:40]!r}, neither lightning:INVOICE nor "
                       "bitcoin:ADDRESS")


def _varint(b: bytes, i: int) -> tuple[int, int]:
    n = b[i]
    if n < 0xfd:
        return n, i + 1
    size = {0xfd: 2, 0xfe: 4, 0xff: 8}[n]
    return int.from_bytes(b[i + 1:i + 1 + size], "little"), i + 1 + size


def txid_of(raw: bytes) -> str:
    """The txid (hash of the serialization without witnesses) of a raw transaction."""
    if len(raw) > 6 and raw[4] == 0 and raw[5] == 1:          # segwit marker + flag
        i = 6
        n_in, i = _varint(raw, i)
        for _ in range(n_in):
            i += 36
            ln, i = _varint(raw, i)
            i += ln + 4
        n_out, i = _varint(raw, i)
        for _ in range(n_out):
            i += 8
            ln, i = _varint(raw, i)
            i += ln
        stripped = raw[:4] + raw[6:i] + raw[-4:]
    else:
        stripped = raw
    if len(stripped) > len(raw):
        raise ValueError("truncated transaction")
    return hashlib.sha256(hashlib.sha256(stripped).digest()).digest()[::-1].hex()


# --- client ---------------------------------------------------------------------------------

class ElectrumPayer(PayerBackend):
    name = "electrum"
    real_money = True

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.rpc = rpc_from(settings)
        self.max_invoice_msat = int(settings.get("max_invoice_msat", DEFAULT_MAX_INVOICE_MSAT))
        fr = settings.get("fee_rate_sat_vb")
        self.fee_rate = DEFAULT_FEE_RATE if fr in (None, "") else Decimal(str(fr))
        self.onchain_min_msat = int(settings.get("onchain_min_msat", 10 * onchain_fee_sat(self.fee_rate) * 1000))
        self._paid: dict[str, str] = {}

    async def pay(self, terms: Terms) -> str:
        if terms.contract_id in self._paid:
            return self._paid[terms.contract_id]
        kind, target, min_sat = parse_account(terms.account)
        if kind == "lightning":
            proof = await self._pay_lightning(target, terms)
        else:
            proof = await self._pay_onchain(target, max(terms.amount_sat, min_sat), terms)
        self._paid[terms.contract_id] = proof
        return proof

    async def _pay_lightning(self, invoice: str, terms: Terms) -> str:
        info = await self.rpc.call("decode_invoice", invoice=invoice)
        amount = int(info.get("amount_msat") or 0)
        if amount <= 0:
            raise PaymentError("electrum: the gateway's invoice has no amount; Electrum 4.3 cannot pay it")
        if amount < terms.amount_msat:
            raise PaymentError(f"electrum: the gateway's invoice asks {amount} msat, less than the "
                               f"{terms.amount_msat} msat agreed; not paying it")
        if amount > max(terms.amount_msat, self.max_invoice_msat):
            raise PaymentError(f"electrum: the gateway's invoice asks {amount} msat for a contract of "
                               f"{terms.amount_msat} msat, above payment.max_invoice_msat "
                               f"({self.max_invoice_msat}); not paying it (raise it to allow bigger top-ups)")
        try:
            res = await self.rpc.call("lnpay", wallet=True, invoice=invoice, timeout=60 + self.rpc.timeout)
        except RPCError as e:
            if "paid already" in str(e) or "already initiated" in str(e):
                pre = await self._preimage(info.get("rhash") or info.get("payment_hash") or "")
                if pre:
                    return "ln:" + pre
            raise
        if not res.get("success") or not res.get("preimage"):
            raise PaymentError(await self._why_failed(info, amount, res.get("log") or []))
        log.info("electrum: paid %d msat over Lightning for contract %s", amount, terms.contract_id)
        return "ln:" + res["preimage"]

    async def _why_failed(self, info: dict, amount: int, htlc_log: list) -> str:
        """Electrum 4.3's lnpay says only success=false (with HTLC failures, if any were tried):
        look at our channels to the gateway's node to say what is wrong."""
        node = info.get("pubkey", "")
        tried = "; ".join(str(x[-1]) for x in htlc_log[-2:] if x)
        try:
            chans = [c for c in await self.rpc.call("list_channels", wallet=True)
                     if c.get("type") == "CHANNEL" and c.get("remote_pubkey") == node]
        except PaymentError:
            chans = None
        if chans == []:
            return (f"electrum: no route: no channel to the gateway's Lightning node {node[:16]}...; open "
                    f"one: electrum open_channel {node}@HOST:PORT AMOUNT")
        if chans:
            open_ = [c for c in chans if c.get("state") == "OPEN"]
            good = [c for c in open_ if c.get("peer_state") == "GOOD"]
            if not open_:
                return (f"electrum: the channel to the gateway is {chans[0].get('state')}, not OPEN yet "
                        "(wait for its confirmations)")
            if not good:
                return ("electrum: the gateway's Lightning node is not connected (its Electrum daemon "
                        "is down or unreachable); the payment is retried once it is back")
            room = max(int(c.get("local_balance", 0)) - int(c.get("local_reserve", 0)) for c in good) * 1000
            if room < amount:
                return (f"electrum: no channel capacity: {room} msat spendable towards the gateway, "
                        f"{amount} msat needed; add funds to the channel or open a bigger one")
        return f"electrum: the Lightning payment failed ({tried or 'no route found'})"

    async def _preimage(self, rhash: str) -> str | None:
        """A payment we made before (e.g. before a restart): its preimage from the history."""
        for item in await self.rpc.call("lightning_history", wallet=True) or []:
            if item.get("payment_hash") == rhash and item.get("preimage"):
                return item["preimage"]
        return None

    async def _pay_onchain(self, address: str, amount_sat: int, terms: Terms) -> str:
        # addtransaction: the wallet keeps it as a local transaction, so its coins are not
        # spent twice by the next payment before the gateway broadcasts this one
        hexstr = await self.rpc.call("payto", wallet=True, destination=address, amount=sat_to_btc(amount_sat),
                                     feerate=float(self.fee_rate), addtransaction=True)
        log.info("electrum: signed %d sat to %s for contract %s, not broadcast", amount_sat, address,
                 terms.contract_id)
        return "tx:" + hexstr

    async def balance_msat(self) -> int:
        bal = await self.rpc.call("getbalance", wallet=True)
        # unconfirmed: our own change (spendable) less unconfirmed spends
        total = sum(Decimal(str(bal.get(k, "0"))) for k in ("confirmed", "unconfirmed", "lightning"))
        return int(total * COIN) * 1000

    def fee_msat(self, amount_msat: int) -> int:
        return 0             # Lightning over a direct channel costs nothing; see quote()

    def quote(self, cost_msat: int) -> list[dict]:
        """Per method: amount paid, expected fee, time to settle (for ``quote --json``)."""
        fee = onchain_fee_sat(self.fee_rate) * 1000
        onchain = max(cost_msat, self.onchain_min_msat)
        return [
            {"method": "lightning", "amount_msat": cost_msat, "fee_msat": 0, "settle_s": LN_SETTLE_S,
             "note": "direct channel to the gateway: no routing fee; the gateway's invoice may be a "
                     "larger top-up, kept as credit"},
            {"method": "onchain", "amount_msat": onchain, "fee_msat": fee, "settle_s": BLOCK_S,
             "note": (f"a contract of {cost_msat} msat is below the on-chain minimum "
                      f"({self.onchain_min_msat} msat, ten times the {fee} msat fee): paid as a top-up, "
                      "the rest kept as credit" if cost_msat < self.onchain_min_msat else
                      "one confirmation (~10 min); 0 s if the gateway takes 0-conf")},
        ]


# --- gateway --------------------------------------------------------------------------------

class ElectrumPayee(PayeeBackend):
    name = "electrum"
    real_money = True
    per_contract_account = True

    def __init__(self, settings: Mapping[str, Any], journal: Journal) -> None:
        super().__init__(journal)
        self.rpc = rpc_from(settings)
        self.method = str(settings.get("method", "lightning"))
        if self.method not in ("lightning", "onchain"):
            raise PaymentError(f"electrum: payment.method must be \"lightning\" or \"onchain\", not {self.method!r}")
        self.invoice_msat = int(settings.get("invoice_msat", DEFAULT_INVOICE_MSAT))
        self.expiry_s = int(float(settings.get("invoice_expiry_s", DEFAULT_EXPIRY_S)))
        self.min_conf = int(settings.get("min_confirmations", 1))
        self.zeroconf_max_msat = int(settings.get("zeroconf_max_msat", 0))
        fr = settings.get("fee_rate_sat_vb")
        rate = DEFAULT_FEE_RATE if fr in (None, "") else Decimal(str(fr))
        self.onchain_min_msat = int(settings.get("onchain_min_msat", 10 * onchain_fee_sat(rate) * 1000))
        if self.min_conf < 0 or self.invoice_msat < 1000:
            raise PaymentError("electrum: payment.min_confirmations must be >= 0 and invoice_msat >= 1000")

    @property
    def account_max_age_s(self) -> float | None:
        """The gateway's account pool hands out no invoice older than this: it must still be
        payable through the grace and the payment (half its life)."""
        return self.expiry_s / 2 if self.method == "lightning" else None

    @property
    def notice(self) -> str:
        return "" if self.method == "lightning" else f"on-chain, {self.min_conf} confirmation(s)"

    async def account_for(self, contract_id: str) -> str:
        have = self.journal.account(contract_id, self.name)
        if have:
            return have
        if self.method == "onchain":
            addr = await self.rpc.call("createnewaddress", wallet=True)
            min_sat = msat_to_sat_ceil(self.onchain_min_msat)
            account = f"bitcoin:{addr}" + (f"?amount={sat_to_btc(min_sat)}" if min_sat else "")
        else:
            sat = msat_to_sat_ceil(self.invoice_msat)
            req = await self.rpc.call("add_request", wallet=True, amount=sat_to_btc(sat),
                                      memo=f"tunnelgate {contract_id}", expiration=self.expiry_s, force=True)
            if not req or not req.get("lightning_invoice"):
                raise PaymentError(explain("add_request", "Lightning not enabled in this wallet", self.rpc.where))
            if req.get("can_receive") is False:
                raise PaymentError(f"electrum: no channel with {sat} sat of inbound capacity: a client must "
                                   "open a channel to this gateway's node (electrum nodeid) first")
            account = "lightning:" + req["lightning_invoice"]
            # the invoice's hash and amount, so a preimage is checked even while the daemon is down
            self.journal.set_account("ln:" + req["rhash"], self.name, f"{sat * 1000} {account}")
        return self.journal.set_account(contract_id, self.name, account)

    async def verify(self, proof: str, terms: Terms) -> Verdict:
        p = proof.strip() if isinstance(proof, str) else ""
        if p.startswith("ln:"):
            return await self.journal.batched(self._verify_ln, p[3:], terms)
        if p.startswith("tx:"):
            return await self._verify_tx(p[3:], terms)
        return Verdict("invalid", "electrum: proof is neither ln:PREIMAGE nor tx:RAWTX")

    def _verify_ln(self, preimage_hex: str, terms: Terms) -> Verdict:
        try:
            pre = bytes.fromhex(preimage_hex)
        except ValueError:
            pre = b""
        if len(pre) != 32:
            return Verdict("invalid", "electrum: a Lightning proof is a 32-byte preimage in hex")
        rhash = hashlib.sha256(pre).hexdigest()
        key = proof_key("electrum", "ln", rhash)
        with self.journal.atomic():
            pre_rec = self._precheck(key, terms)
            if isinstance(pre_rec, Verdict):
                return pre_rec
            if pre_rec is not None:
                return pre_rec.verdict()
            issued = self.journal.account("ln:" + rhash, self.name)
            if issued is None:
                return Verdict("invalid", "electrum: this preimage pays no invoice this gateway issued")
            amount_s, invoice = issued.split(" ", 1)
            mine = self.journal.account(terms.contract_id, self.name)
            if mine != invoice:
                return Verdict("invalid", f"electrum: this preimage pays an invoice issued for another "
                                          f"contract, not {terms.contract_id}; an invoice buys once")
            amount = int(amount_s)
            if amount < terms.amount_msat:
                return Verdict("invalid", f"electrum: underpaid: the invoice is for {amount} msat, contract "
                                          f"{terms.contract_id} costs {terms.amount_msat} msat")
            rec, _ = self.journal.insert(key, terms.contract_id, terms.peer, self.name, amount, "confirmed",
                                         "Lightning: preimage of our invoice", detail={"kind": "ln",
                                                                                       "rhash": rhash})
        log.info("electrum: Lightning payment of %d msat for contract %s", amount, terms.contract_id)
        return rec.verdict()

    async def _verify_tx(self, hexstr: str, terms: Terms) -> Verdict:
        try:
            raw = bytes.fromhex(hexstr)
            txid = txid_of(raw)
        except (ValueError, IndexError, KeyError):
            return Verdict("invalid", "electrum: proof is not a raw transaction in hex")
        key = proof_key("electrum", "tx", txid)
        pre = self._precheck(key, terms)
        if isinstance(pre, Verdict):
            return pre
        if pre is not None:
            return pre.verdict() if pre.status != "pending" else await self._check(key)
        account = self.journal.account(terms.contract_id, self.name)
        if account is None or not account.startswith("bitcoin:"):
            return Verdict("invalid", f"electrum: we gave no address for contract {terms.contract_id}")
        _, addr, _ = parse_account(account)
        try:
            tx = await self.rpc.call("deserialize", tx=hexstr)
        except RPCError as e:
            if e.unreachable:
                return Verdict("invalid", f"{e} (cannot check the payment now; send it again later)")
            return Verdict("invalid", f"electrum: not a valid transaction: {e}")
        paid = sum(int(o.get("value_sats", 0)) for o in tx.get("outputs", []) if o.get("address") == addr)
        if paid == 0:
            return Verdict("invalid", f"electrum: the transaction pays nothing to {addr}, the address of "
                                      f"contract {terms.contract_id}")
        need = max(terms.amount_sat, msat_to_sat_ceil(self.onchain_min_msat))
        if paid < need:
            why = ("below the on-chain minimum of this gateway (the fee would eat it): pay at least "
                   f"{need} sat, the rest stays as credit, or use Lightning"
                   if paid >= terms.amount_sat else f"contract {terms.contract_id} needs {need} sat")
            return Verdict("invalid", f"electrum: underpaid: the transaction pays {paid} sat to {addr}; {why}")
        rec, inserted = self.journal.insert(key, terms.contract_id, terms.peer, self.name, paid * 1000,
                                            "pending", "broadcasting",
                                            detail={"kind": "tx", "txid": txid, "hex": hexstr, "address": addr})
        if not inserted:
            return await self._check(key)
        try:
            await self.rpc.call("broadcast", tx=hexstr)
        except RPCError as e:
            if e.unreachable:                 # stays pending: poll broadcasts again
                self.journal.update(key, reason=f"{e}; will retry")
                return self.journal.get(key).verdict()  # type: ignore[union-attr]
            if "already" not in str(e).lower() and "txn-already" not in str(e).lower():
                return self.journal.update(key, status="invalid",
                                           reason=f"electrum: broadcast refused: {e}").verdict()
        log.info("electrum: accepted tx %s for contract %s (%d sat)", txid, terms.contract_id, paid)
        return await self._check(key)

    async def _check(self, key: str) -> Verdict:
        rec = self.journal.get(key)
        assert rec is not None
        if rec.status != "pending" or rec.detail.get("kind") != "tx":
            return rec.verdict()
        txid, addr, hexstr = rec.detail["txid"], rec.detail["address"], rec.detail["hex"]
        try:
            hist = await self.rpc.call("getaddresshistory", address=addr)
            tip = int((await self.rpc.call("getinfo")).get("blockchain_height", 0))
        except RPCError as e:
            return self.journal.update(key, reason=str(e)).verdict()
        height = next((int(h["height"]) for h in hist or [] if h.get("tx_hash") == txid), None)
        if height is None:                   # not seen by the server: (re)broadcast it
            try:
                await self.rpc.call("broadcast", tx=hexstr)
            except RPCError as e:
                if e.unreachable:
                    return self.journal.update(key, reason=str(e)).verdict()
                if "already" not in str(e).lower():
                    return self.journal.update(key, status="invalid", reason=(
                        f"electrum: transaction {txid} was replaced or double-spent: {e}")).verdict()
            return self.journal.update(key, reason="broadcast, not yet seen by the server").verdict()
        conf = tip - height + 1 if height > 0 else 0
        need = self.min_conf
        if need == 0 and rec.amount_msat > self.zeroconf_max_msat:
            need = 1                         # 0-conf only up to the configured amount
        if conf >= need:
            return self.journal.update(key, status="confirmed", reason=(
                f"{conf} confirmation(s)" if conf else "in the mempool (0-conf accepted)")).verdict()
        extra = "" if self.min_conf else f" (above the 0-conf limit of {self.zeroconf_max_msat} msat)"
        return self.journal.update(key, reason=f"{conf}/{need} confirmations{extra}").verdict()

    async def poll(self, contract_id: str) -> Verdict:
        rec = self.journal.for_contract(contract_id)
        if rec is None:
            return Verdict("invalid", f"no payment recorded for contract {contract_id}")
        return await self._check(rec.key)
