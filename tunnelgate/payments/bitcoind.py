"""The ``bitcoind`` backend: on-chain bitcoin through a Bitcoin Core/Knots
wallet's JSON-RPC (``python-bitcoinrpc``; scripts/install-payments).

Settings (both sides): ``rpc_url`` = ``http://user:pass@127.0.0.1:PORT/wallet/NAME``
(scripts/regtest url DATADIR WALLET prints one), ``rpc_timeout_s`` (30).
Payer: ``replaceable`` (signal BIP125 RBF, default false), ``fee_rate_sat_vb``
(optional; else the node's estimate/fallback). Payee: ``min_confirmations``
(default 1; 0 = confirmed once in the mempool).

The client funds and signs a transaction paying the contract's address
WITHOUT broadcasting it (its inputs are locked in its wallet) and sends the raw
hex in-band. The gateway decodes it, checks the outputs to the address it
gave for that contract cover the amount (sats, rounded up), records it in the
journal (key: txid), ``testmempoolaccept`` then ``sendrawtransaction``, and
answers ``pending`` until ``min_confirmations``. ``poll`` watches
``gettransaction`` and the mempool: a transaction replaced or conflicted away
is ``invalid``.

python-bitcoinrpc pitfalls handled here: a fresh AuthServiceProxy per call
(its keep-alive connection dies after ~30 s idle), positional arguments only,
no ``batch_``; amounts come back as Decimal and are converted to integer sats.
"""
from __future__ import annotations

import logging
import urllib.parse
from decimal import Decimal
from typing import Any, Mapping

from .base import (Journal, PayeeBackend, PayerBackend, PaymentError, Terms, Verdict, proof_key,
                   require, to_thread)

log = logging.getLogger("tunnelgate.payments.bitcoind")
COIN = Decimal(100_000_000)
TYPICAL_VSIZE = 141  # 1 P2WPKH input, 2 outputs


def btc_to_sat(v: Any) -> int:
    d = Decimal(str(v)) * COIN
    if d != d.to_integral_value():
        raise ValueError(f"{v} BTC is not a whole number of sats")
    return int(d)


def sat_to_btc(sat: int) -> Decimal:
    return (Decimal(int(sat)) / COIN).quantize(Decimal("0.00000001"))


class RPCError(PaymentError):
    def __init__(self, msg: str, code: int | None = None, method: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.method = method


class RPC:
    """Blocking JSON-RPC calls, one fresh connection each; use ``call`` from async code."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        try:
            from bitcoinrpc.authproxy import AuthServiceProxy  # noqa: F401
        except ImportError as e:
            raise PaymentError("the bitcoind backend needs python-bitcoinrpc; run scripts/install-payments") from e
        self.url = url
        self.timeout = timeout
        u = urllib.parse.urlsplit(url)
        self.where = f"{u.hostname}:{u.port}{u.path}"  # no credentials in messages

    def call_sync(self, method: str, *args: Any) -> Any:
        from bitcoinrpc.authproxy import AuthServiceProxy, JSONRPCException
        proxy = AuthServiceProxy(self.url, timeout=self.timeout)
        try:
            return getattr(proxy, method)(*args)
        except JSONRPCException as e:
            err = e.error if isinstance(getattr(e, "error", None), dict) else {}
            raise RPCError(f"bitcoind {method}: {err.get('message', e)}", err.get("code"), method) from None
        except (OSError, EOFError) as e:
            raise RPCError(f"cannot reach bitcoind at {self.where} ({e}); is the node running "
                           "(scripts/regtest start) and payment.rpc_url right?", None, method) from None
        except ValueError as e:  # e.g. an HTTP error page instead of JSON (bad password)
            raise RPCError(f"bitcoind {method} at {self.where}: {e}; check the RPC user/password",
                           None, method) from None
        finally:
            conn = getattr(proxy, "_AuthServiceProxy__conn", None)
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass

    async def call(self, method: str, *args: Any) -> Any:
        return await to_thread(self.call_sync, method, *args)


def _rpc_from(settings: Mapping[str, Any]) -> RPC:
    return RPC(str(require(settings, "rpc_url", "bitcoind")), float(settings.get("rpc_timeout_s", 30)))


class BitcoindPayer(PayerBackend):
    name = "bitcoind"
    real_money = True

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.rpc = _rpc_from(settings)
        self.replaceable = bool(settings.get("replaceable", False))
        fr = settings.get("fee_rate_sat_vb")
        self.fee_rate = None if fr in (None, "") else Decimal(str(fr))
        self._paid: dict[str, str] = {}

    async def _check_chain(self) -> None:
        info = await self.rpc.call("getblockchaininfo")
        self.real_money = info.get("chain") == "main"

    async def pay(self, terms: Terms) -> str:
        if terms.contract_id in self._paid:
            return self._paid[terms.contract_id]
        addr = terms.account.strip().removeprefix("bitcoin:")
        if not addr:
            raise PaymentError("bitcoind: the gateway gave no address to pay")
        amount = terms.amount_sat
        opts: dict[str, Any] = {"replaceable": self.replaceable, "lockUnspents": True}
        if self.fee_rate is not None:
            opts["fee_rate"] = self.fee_rate
        try:
            funded = await self.rpc.call("walletcreatefundedpsbt", [], [{addr: sat_to_btc(amount)}], 0, opts)
        except RPCError as e:
            if e.code == -6 or "insufficient funds" in str(e).lower():
                bal = await self._balance_sat_or_none()
                have = f"{bal} sat" if bal is not None else "too little"
                raise PaymentError(f"bitcoind: insufficient funds: the wallet at {self.rpc.where} has {have}, "
                                   f"needs {amount} sat plus the fee; send coins to it "
                                   "(regtest: scripts/regtest mine DATADIR 101)") from e
            if e.code == -5:
                raise PaymentError(f"bitcoind: the gateway's address {addr!r} is invalid for this "
                                   f"network: {e}") from e
            raise
        signed = await self.rpc.call("walletprocesspsbt", funded["psbt"], True)
        final = await self.rpc.call("finalizepsbt", signed["psbt"], True)
        if not final.get("complete") or "hex" not in final:
            raise PaymentError(f"bitcoind: the wallet at {self.rpc.where} could not sign the payment "
                               "(locked wallet? watch-only?); unlock it (walletpassphrase)")
        self._paid[terms.contract_id] = final["hex"]
        log.info("bitcoind: signed %d sat to %s for contract %s (fee %s BTC), not broadcast",
                 amount, addr, terms.contract_id, funded.get("fee"))
        return final["hex"]

    async def _balance_sat_or_none(self) -> int | None:
        try:
            return await self.balance_msat() // 1000
        except PaymentError:
            return None

    async def balance_msat(self) -> int:
        bal = await self.rpc.call("getbalances")
        return btc_to_sat(bal["mine"]["trusted"]) * 1000

    def fee_msat(self, amount_msat: int) -> int:
        rate = self.fee_rate if self.fee_rate is not None else Decimal(10)
        fee_sat = int((rate * TYPICAL_VSIZE).to_integral_value(rounding="ROUND_CEILING"))
        return fee_sat * 1000 + (-amount_msat % 1000)


class BitcoindPayee(PayeeBackend):
    name = "bitcoind"
    real_money = True
    per_contract_account = True

    def __init__(self, settings: Mapping[str, Any], journal: Journal) -> None:
        super().__init__(journal)
        self.rpc = _rpc_from(settings)
        self.min_conf = int(settings.get("min_confirmations", 1))
        if self.min_conf < 0:
            raise PaymentError("bitcoind: payment.min_confirmations must be >= 0")

    async def account_for(self, contract_id: str) -> str:
        have = self.journal.account(contract_id, self.name)
        if have:
            return have
        addr = await self.rpc.call("getnewaddress", f"tunnelgate:{contract_id}")
        return self.journal.set_account(contract_id, self.name, addr)

    async def verify(self, proof: str, terms: Terms) -> Verdict:
        hexstr = proof.strip()
        try:
            bytes.fromhex(hexstr)
            tx = await self.rpc.call("decoderawtransaction", hexstr)
        except ValueError:
            return Verdict("invalid", "bitcoind: proof is not a raw transaction in hex")
        except RPCError as e:
            if e.code is None:  # node unreachable: nothing recorded, the same proof may come again
                return Verdict("invalid", f"{e} (cannot check the payment now; send it again later)")
            return Verdict("invalid", f"bitcoind: not a valid transaction: {e}")
        txid = tx["txid"]
        key = proof_key("bitcoind", txid)
        pre = self._precheck(key, terms)
        if isinstance(pre, Verdict):
            return pre
        if pre is not None:
            return pre.verdict() if pre.status != "pending" else await self.poll(terms.contract_id)
        addr = self.journal.account(terms.contract_id, self.name)
        if addr is None:
            return Verdict("invalid", f"bitcoind: we gave no address for contract {terms.contract_id}")
        if terms.account and terms.account.removeprefix("bitcoin:") != addr:
            return Verdict("invalid", f"bitcoind: terms name address {terms.account}, but contract "
                                      f"{terms.contract_id} is paid to {addr}")
        paid = 0
        for out in tx.get("vout", []):
            spk = out.get("scriptPubKey", {})
            if spk.get("address") == addr or addr in (spk.get("addresses") or []):
                paid += btc_to_sat(out["value"])
        need = terms.amount_sat
        if paid == 0:
            return Verdict("invalid", f"bitcoind: the transaction pays nothing to {addr}, the address of "
                                      f"contract {terms.contract_id}")
        if paid < need:
            return Verdict("invalid", f"bitcoind: underpaid: the transaction pays {paid} sat to {addr}, "
                                      f"contract {terms.contract_id} needs {need} sat")
        acc = (await self.rpc.call("testmempoolaccept", [hexstr]))[0]
        if not acc.get("allowed"):
            reason = acc.get("reject-reason", "rejected")
            if reason not in ("txn-already-in-mempool", "txn-already-known"):
                return Verdict("invalid", f"bitcoind: the node refuses the transaction: {reason}")
        # recorded before broadcasting: a crash after sendrawtransaction loses nothing
        rec, inserted = self.journal.insert(key, terms.contract_id, terms.peer, self.name, paid * 1000,
                                            "pending", "broadcasting",
                                            detail={"txid": txid, "hex": hexstr, "address": addr})
        if not inserted:
            return await self.verify(proof, terms)
        try:
            await self.rpc.call("sendrawtransaction", hexstr)
        except RPCError as e:
            if e.code is None:  # unreachable: stays pending, poll re-broadcasts
                self.journal.update(key, reason=f"{e}; will retry")
                return self.journal.get(key).verdict()  # type: ignore[union-attr]
            if "already" not in str(e).lower():
                return self.journal.update(key, status="invalid",
                                           reason=f"bitcoind: broadcast refused: {e}").verdict()
        log.info("bitcoind: accepted tx %s for contract %s (%d sat)", txid, terms.contract_id, paid)
        return await self._check(key)

    async def _check(self, key: str) -> Verdict:
        rec = self.journal.get(key)
        assert rec is not None
        if rec.status != "pending":
            return rec.verdict()
        txid, hexstr = rec.detail["txid"], rec.detail["hex"]
        try:
            wtx = await self.rpc.call("gettransaction", txid)
        except RPCError as e:
            if e.code is None:
                return self.journal.update(key, reason=str(e)).verdict()
            wtx = None  # not (yet) known to our wallet
        conf = int(wtx.get("confirmations", 0)) if wtx else 0
        if conf < 0:
            return self.journal.update(key, status="invalid", reason=(
                f"bitcoind: transaction {txid} was double-spent: a conflicting transaction "
                f"confirmed ({', '.join(wtx.get('walletconflicts', [])) or 'unknown'})")).verdict()
        if conf > 0:
            if conf >= self.min_conf:
                return self.journal.update(key, status="confirmed",
                                           reason=f"{conf} confirmation(s)").verdict()
            return self.journal.update(key, reason=f"{conf}/{self.min_conf} confirmations").verdict()
        # unconfirmed: must be in our node's mempool, else it was replaced / dropped
        try:
            await self.rpc.call("getmempoolentry", txid)
            in_mempool = True
        except RPCError as e:
            if e.code is None:
                return self.journal.update(key, reason=str(e)).verdict()
            in_mempool = False
        if not in_mempool:
            conflicts = (wtx or {}).get("mempoolconflicts") or (wtx or {}).get("walletconflicts") or []
            try:  # evicted but still valid? put it back
                await self.rpc.call("sendrawtransaction", hexstr)
            except RPCError as e:
                if e.code is None:
                    return self.journal.update(key, reason=str(e)).verdict()
                detail = f" by {', '.join(conflicts)}" if conflicts else ""
                return self.journal.update(key, status="invalid", reason=(
                    f"bitcoind: transaction {txid} was replaced or double-spent{detail}: {e}")).verdict()
        if self.min_conf == 0:
            return self.journal.update(key, status="confirmed", reason="in the mempool (0-conf accepted)").verdict()
        return self.journal.update(key, reason=f"in the mempool, 0/{self.min_conf} confirmations").verdict()

    async def poll(self, contract_id: str) -> Verdict:
        rec = self.journal.for_contract(contract_id)
        if rec is None:
            return Verdict("invalid", f"no payment recorded for contract {contract_id}")
        return await self._check(rec.key)
