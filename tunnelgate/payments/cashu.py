"""The ``cashu`` backend: ecash tokens (nutshell 0.21.0, scripts/install-payments).

Client (payer) settings: ``wallet_dir`` (its ecash, SQLite), ``mint_url``.
``pay`` swaps at the mint for a token locked to the gateway's P2PK key
(NUT-11: nobody who copies the string can spend it), worth the contract
rounded up to whole sats plus the mint's input fee for the swap the gateway
will do, and returns the ``cashuB…`` string.

Gateway (payee) settings: ``mints`` (accepted mint URLs), ``p2pk_key_file``
(32-byte secp256k1 private key, hex; ``python -m tunnelgate.payments.cashu
keygen FILE`` makes one), ``wallet_dir`` (where taken ecash is kept).
``verify`` checks offline (mint allowed, unit sat, a DLEQ proof on every
proof, each locked to our key alone, worth enough after the mint's fee) and
answers ``pending``; the swap at the mint (redeem) runs in the background and
``poll`` answers ``confirmed`` or ``invalid`` with the mint's reason
("already spent", …). Because tokens are locked to our key, a proof the mint
reports spent after *we* already tried to swap it (a crash or lost answer
mid-swap) is ours: it is confirmed, not lost.

CLI: ``python -m tunnelgate.payments.cashu keygen FILE`` /
``fund WALLET_DIR AMOUNT_SAT [--mint URL]`` / ``balance WALLET_DIR [--mint URL]``.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import os
import sys
import time
from typing import Any, Mapping

from .base import (Journal, PayeeBackend, PayerBackend, PaymentError, Terms, Verdict, as_list,
                   msat_to_sat_ceil, proof_key, require)

log = logging.getLogger("tunnelgate.payments.cashu")

_imported = False


def _import_cashu() -> None:
    """Import nutshell lazily (0.5-4 s) and quietly: it reads ./.env and
    ~/.cashu/.env at import and logs through loguru."""
    global _imported
    if _imported:
        return
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import cashu.wallet.wallet  # noqa: F401
    except ImportError as e:
        raise PaymentError(f"the cashu backend needs nutshell ({e}); run scripts/install-payments") from e
    try:
        from loguru import logger
        logger.disable("cashu")
    except ImportError:  # pragma: no cover
        pass
    _imported = True


def norm_url(url: str) -> str:
    return url.strip().rstrip("/")


def make_account(mints: list[str], pubkey_hex: str) -> str:
    """What PROPOSE advertises: JSON {"mints": [...], "p2pk": pubkey}."""
    return json.dumps({"mints": [norm_url(m) for m in mints], "p2pk": pubkey_hex}, separators=(",", ":"))


def parse_account(account: str) -> tuple[list[str], str]:
    try:
        d = json.loads(account)
        mints = [norm_url(m) for m in d["mints"]]
        pk = str(d["p2pk"])
        bytes.fromhex(pk)
    except (ValueError, KeyError, TypeError) as e:
        raise PaymentError(f"cashu: the gateway's account {account!r} is not "
                           '{"mints": [...], "p2pk": "<hex pubkey>"}') from e
    if len(pk) != 66:
        raise PaymentError(f"cashu: the gateway's P2PK key {pk!r} is not a compressed secp256k1 key")
    return mints, pk


async def _open_wallet(mint_url: str, wallet_dir: str, *, online: bool = True):
    """A nutshell Wallet for one mint, its database in wallet_dir."""
    _import_cashu()
    from cashu.wallet.wallet import Wallet
    os.makedirs(wallet_dir, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):  # "Generated a new mnemonic…"
        w = await Wallet.with_db(url=mint_url, db=wallet_dir, name="wallet")
    if online:
        try:
            await w.load_mint()
        except Exception as e:
            raise PaymentError(f"cashu: cannot reach the mint {mint_url}: {_msg(e)}; "
                               "check the URL and that the mint is running") from e
    await w.load_proofs(reload=True)
    return w


def _msg(e: BaseException) -> str:
    s = str(e).strip() or type(e).__name__
    return s.splitlines()[0][:300]


def _keyset_fee_ppk(wallet) -> int:
    ks = [k for k in wallet.keysets.values() if k.active and k.unit == wallet.unit]
    return max((int(getattr(k, "input_fee_ppk", 0) or 0) for k in ks), default=0)


def _split_count(amount: int) -> int:
    return bin(amount).count("1")


def send_amount_sat(amount_msat: int, fee_ppk: int) -> tuple[int, int]:
    """(sats to lock, of which mint input fee) so that after the gateway's swap
    at least ceil(amount_msat/1000) sats remain."""
    base = msat_to_sat_ceil(amount_msat)
    total = base
    for _ in range(8):  # converges in 1-2 steps
        fee = math.ceil(_split_count(total) * fee_ppk / 1000) if total else 0
        if base + fee == total:
            break
        total = base + fee
    return total, total - base


class CashuPayer(PayerBackend):
    name = "cashu"
    real_money = True

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.wallet_dir = os.fspath(require(settings, "wallet_dir", "cashu"))
        self.mint_url = norm_url(str(require(settings, "mint_url", "cashu")))
        self._wallet = None
        self._lock = asyncio.Lock()
        self._paid: dict[str, str] = {}

    async def _w(self):
        if self._wallet is None:
            self._wallet = await _open_wallet(self.mint_url, self.wallet_dir)
            try:
                with open(os.path.join(self.wallet_dir, "mint_url"), "w") as f:
                    f.write(self.mint_url + "\n")
            except OSError:
                pass
        return self._wallet

    async def offer(self) -> dict:
        return {"mint": self.mint_url}

    def _fund_hint(self) -> str:
        return (f"fund it: scripts/mint fund {self.wallet_dir} <sats> --mint {self.mint_url} "
                f"(test mint), or receive ecash from {self.mint_url} into it")

    async def pay(self, terms: Terms) -> str:
        if terms.contract_id in self._paid:  # same contract asked again: same token
            return self._paid[terms.contract_id]
        mints, pubkey = parse_account(terms.account)
        if self.mint_url not in mints:
            raise PaymentError(f"cashu: the gateway accepts ecash from {', '.join(mints) or 'no mint'}, "
                               f"our wallet holds ecash of {self.mint_url}; use a wallet of an accepted mint")
        async with self._lock:
            w = await self._w()
            await w.load_proofs(reload=True)
            amount, fee = send_amount_sat(terms.amount_msat, _keyset_fee_ppk(w))
            have = int(w.available_balance.amount)
            if have == 0:
                raise PaymentError(f"cashu: insufficient funds: the wallet {self.wallet_dir} is empty "
                                   f"(needs {amount} sat); " + self._fund_hint())
            # the swap that locks our ecash costs our own input fee too
            need = amount + math.ceil(len(w.proofs) * _keyset_fee_ppk(w) / 1000)
            if have < amount:
                raise PaymentError(f"cashu: insufficient funds: the wallet has {have} sat, needs "
                                   f"{amount} sat (+ fees, up to {need} sat); " + self._fund_hint())
            from cashu.wallet.errors import BalanceTooLowError
            try:
                lock = await w.create_p2pk_lock(pubkey)
                _, send = await w.swap_to_send(w.proofs, amount, secret_lock=lock, set_reserved=True)
                token = await w.serialize_proofs(send, include_dleq=True)
            except BalanceTooLowError as e:
                raise PaymentError(f"cashu: insufficient funds: the wallet has {have} sat, needs "
                                   f"{amount} sat plus the mint's fee; " + self._fund_hint()) from e
            except PaymentError:
                raise
            except Exception as e:
                raise PaymentError(f"cashu: paying {amount} sat at {self.mint_url} failed: {_msg(e)}") from e
        self._paid[terms.contract_id] = token
        log.info("cashu: paid contract %s: %d sat (fee %d) locked to %s…", terms.contract_id,
                 amount, fee, pubkey[:12])
        return token

    async def balance_msat(self) -> int:
        async with self._lock:
            w = await self._w()
            await w.load_proofs(reload=True)
            return int(w.available_balance.amount) * 1000

    def fee_msat(self, amount_msat: int) -> int:
        ppk = _keyset_fee_ppk(self._wallet) if self._wallet is not None else 0
        total, _ = send_amount_sat(amount_msat, ppk)
        return total * 1000 - amount_msat

    async def close(self) -> None:
        self._wallet = None


def load_private_key(path: str):
    _import_cashu()
    from cashu.core.crypto.secp import PrivateKey
    try:
        with open(path) as f:
            raw = f.read().strip()
        return PrivateKey(bytes.fromhex(raw))
    except FileNotFoundError as e:
        raise PaymentError(f"cashu: P2PK key file {path} not found; make one with "
                           f"`python -m tunnelgate.payments.cashu keygen {path}`") from e
    except (ValueError, TypeError, OSError) as e:
        raise PaymentError(f"cashu: P2PK key file {path} must hold a 32-byte private key in hex: {e}") from e


class CashuPayee(PayeeBackend):
    name = "cashu"
    real_money = True

    def __init__(self, settings: Mapping[str, Any], journal: Journal) -> None:
        super().__init__(journal)
        self.mints = [norm_url(m) for m in as_list(require(settings, "mints", "cashu"))]
        self.wallet_dir = os.fspath(require(settings, "wallet_dir", "cashu"))
        self._key = load_private_key(os.fspath(require(settings, "p2pk_key_file", "cashu")))
        self.pubkey = self._key.public_key.format().hex()
        self.redeem_timeout = float(settings.get("redeem_timeout_s", 20))
        self._wallets: dict[str, Any] = {}
        self._wlock = asyncio.Lock()
        self._tasks: dict[str, asyncio.Task] = {}

    async def _wallet(self, mint_url: str, reload_keys: bool = False):
        async with self._wlock:
            w = self._wallets.get(mint_url)
            if w is None:
                # one db dir per mint keeps keysets and proofs apart
                sub = os.path.join(self.wallet_dir, mint_url.replace("://", "_").replace("/", "_").replace(":", "_"))
                w = await _open_wallet(mint_url, sub)
                w.private_key = self._key
                self._wallets[mint_url] = w
            elif reload_keys:
                await w.load_mint()
            return w

    async def account_for(self, contract_id: str) -> str:
        return make_account(self.mints, self.pubkey)

    # -- offline checks ----------------------------------------------------
    def _check_lock(self, proof) -> str | None:
        from cashu.core.secret import SecretKind
        from cashu.core.p2pk import P2PKSecret
        from cashu.core.secret import Secret
        try:
            secret = Secret.deserialize(proof.secret)
        except Exception:
            return "a proof is not locked (plain secret): it must be locked to our P2PK key"
        if secret.kind != SecretKind.P2PK.value:
            return f"a proof is locked with {secret.kind}, not P2PK to our key"
        s = P2PKSecret.from_secret(secret)
        if s.data.lower() != self.pubkey:
            return "a proof is locked to another key, not ours"
        for tag in ("pubkeys", "refund", "locktime", "n_sigs_refund"):
            if s.tags.get_tag(tag) is not None:
                return f"a proof carries a {tag!r} condition (another key or a time could spend it)"
        n = s.tags.get_tag("n_sigs")
        if n is not None and str(n) != "1":
            return "a proof needs more than one signature"
        return None

    async def verify(self, proof: str, terms: Terms) -> Verdict:
        _import_cashu()
        from cashu.wallet.helpers import deserialize_token_from_string
        try:
            token = deserialize_token_from_string(proof.strip())
            proofs = list(token.proofs)
            mint = norm_url(token.mint)
            unit = str(token.unit)
        except Exception as e:
            return Verdict("invalid", f"cashu: not a cashu token: {_msg(e)}")
        if not proofs:
            return Verdict("invalid", "cashu: token holds no proofs")
        key = proof_key("cashu", *sorted(p.secret for p in proofs))
        pre = self._precheck(key, terms)
        if isinstance(pre, Verdict):
            return pre
        if pre is not None:
            return pre.verdict() if pre.status != "pending" else await self.poll(terms.contract_id)
        if mint not in self.mints:
            return Verdict("invalid", f"cashu: token is from mint {mint}, which we do not accept "
                                      f"(accepted: {', '.join(self.mints)})")
        if unit.split(".")[-1] != "sat":
            return Verdict("invalid", f"cashu: token unit is {unit}, we take sat")
        for p in proofs:
            why = self._check_lock(p)
            if why:
                return Verdict("invalid", "cashu: " + why)
            if not p.dleq:
                return Verdict("invalid", "cashu: a proof has no DLEQ proof (send tokens with DLEQ)")
        try:
            w = await self._wallet(mint)
            await w._expand_short_keyset_ids(proofs)
            if any(p.id not in w.keysets for p in proofs):
                w = await self._wallet(mint, reload_keys=True)
                await w._expand_short_keyset_ids(proofs)
            unknown = [p.id for p in proofs if p.id not in w.keysets]
            if unknown:
                return Verdict("invalid", f"cashu: unknown keyset {unknown[0]} at {mint}")
            w.verify_proofs_dleq(proofs)
            fee = int(w.get_fees_for_proofs(proofs))
        except PaymentError as e:
            return Verdict("invalid", str(e))
        except Exception as e:
            return Verdict("invalid", f"cashu: {_msg(e)}")
        total = sum(int(p.amount) for p in proofs)
        net = total - fee
        need = terms.amount_sat
        if net < need:
            return Verdict("invalid", f"cashu: underpaid: token is worth {total} sat, {net} sat after the "
                                      f"mint's input fee of {fee} sat; contract {terms.contract_id} "
                                      f"needs {need} sat")
        rec, inserted = self.journal.insert(
            key, terms.contract_id, terms.peer, "cashu", net * 1000, "pending",
            "checked offline; swapping at the mint",
            detail={"mint": mint, "token": proof.strip(), "attempts": 0})
        if not inserted:  # a concurrent verify of the same proof
            return await self.verify(proof, terms)
        self._start_redeem(rec.key)
        return rec.verdict()

    # -- redeem (swap at the mint) ------------------------------------------
    def _start_redeem(self, key: str) -> asyncio.Task:
        t = self._tasks.get(key)
        if t is None or t.done():
            t = asyncio.get_running_loop().create_task(self._redeem(key), name=f"cashu-redeem-{key[:16]}")
            self._tasks[key] = t
        return t

    async def _redeem(self, key: str) -> Verdict:
        from cashu.wallet.helpers import deserialize_token_from_string
        rec = self.journal.get(key)
        if rec is None or rec.status != "pending":
            return rec.verdict() if rec else Verdict("invalid", "unknown proof")
        attempts = int(rec.detail.get("attempts", 0)) + 1
        # durable BEFORE the swap: if we crash after the mint took it, the
        # next attempt finds it spent and knows it may be ours
        self.journal.update(key, detail={"attempts": attempts, "last_attempt": time.time()})
        token = deserialize_token_from_string(rec.detail["token"])
        proofs = list(token.proofs)
        try:
            w = await self._wallet(rec.detail["mint"])
            await w._expand_short_keyset_ids(proofs)
            await w.redeem(proofs)
        except PaymentError as e:  # mint unreachable: stays pending
            return self.journal.update(key, reason=f"{e}; will retry").verdict()
        except Exception as e:
            msg = _msg(e)
            low = msg.lower()
            if "already spent" in low or "11001" in low:
                if attempts > 1:
                    log.warning("cashu: %s spent at the mint after our earlier swap attempt: ours", key)
                    return self.journal.update(
                        key, status="confirmed",
                        reason="taken (our earlier swap went through; the token is locked to our key)"
                    ).verdict()
                return self.journal.update(key, status="invalid", reason=f"cashu: mint says: {msg}").verdict()
            if _is_network_error(e):
                return self.journal.update(key, reason=f"cashu: mint unreachable ({msg}); will retry").verdict()
            return self.journal.update(key, status="invalid", reason=f"cashu: mint refused the token: {msg}").verdict()
        log.info("cashu: took %d msat for contract %s", rec.amount_msat, rec.contract_id)
        return self.journal.update(key, status="confirmed", reason="swapped at the mint").verdict()

    async def poll(self, contract_id: str) -> Verdict:
        rec = self.journal.for_contract(contract_id)
        if rec is None:
            return Verdict("invalid", f"no payment recorded for contract {contract_id}")
        if rec.status != "pending":
            return rec.verdict()
        t = self._start_redeem(rec.key)
        try:
            await asyncio.wait_for(asyncio.shield(t), self.redeem_timeout)
        except asyncio.TimeoutError:
            pass
        except Exception as e:  # a bug in the task: report, keep pending
            log.error("cashu: redeem task failed: %s", e)
        return self.journal.get(rec.key).verdict()  # type: ignore[union-attr]

    async def close(self) -> None:
        for t in self._tasks.values():
            if not t.done():
                try:
                    await asyncio.wait_for(asyncio.shield(t), 5)
                except Exception:
                    t.cancel()
        self._tasks.clear()
        self._wallets.clear()


def _is_network_error(e: BaseException) -> bool:
    try:
        import httpx
        if isinstance(e, (httpx.TransportError,)):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(e, (OSError, asyncio.TimeoutError))


# -- small CLI: keygen, fund, balance ---------------------------------------

def keygen(path: str) -> str:
    _import_cashu()
    from cashu.core.crypto.secp import PrivateKey
    k = PrivateKey()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(k.to_hex() + "\n")
    return k.public_key.format().hex()


def _resolve_mint(wallet_dir: str, mint: str | None) -> str:
    if mint:
        return norm_url(mint)
    p = os.path.join(wallet_dir, "mint_url")
    if os.path.exists(p):
        with open(p) as f:
            return norm_url(f.read())
    if os.environ.get("TUNNELGATE_MINT_URL"):
        return norm_url(os.environ["TUNNELGATE_MINT_URL"])
    raise PaymentError(f"which mint? pass --mint URL (or write it to {p})")


async def fund(wallet_dir: str, amount_sat: int, mint: str | None = None) -> int:
    """Mint amount_sat into the wallet (works against a FakeWallet test mint,
    whose invoices pay themselves). Returns the new balance in sat."""
    url = _resolve_mint(wallet_dir, mint)
    w = await _open_wallet(url, wallet_dir)
    with open(os.path.join(wallet_dir, "mint_url"), "w") as f:
        f.write(url + "\n")
    q = await w.request_mint(amount_sat)
    deadline = time.monotonic() + 20
    while True:
        try:
            await w.mint(amount_sat, quote_id=q.quote)
            break
        except Exception as e:
            if time.monotonic() > deadline:
                raise PaymentError(f"cashu: minting {amount_sat} sat at {url} failed: {_msg(e)} "
                                   "(only a test mint with FakeWallet pays its own invoices)") from e
            await asyncio.sleep(0.2)
    await w.load_proofs(reload=True)
    return int(w.available_balance.amount)


async def _balance(wallet_dir: str, mint: str | None) -> int:
    w = await _open_wallet(_resolve_mint(wallet_dir, mint), wallet_dir)
    return int(w.available_balance.amount)


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m tunnelgate.payments.cashu")
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keygen", help="make the gateway's P2PK key file; prints the public key")
    k.add_argument("file")
    f = sub.add_parser("fund", help="mint ecash into a client wallet (test mint)")
    f.add_argument("wallet_dir")
    f.add_argument("amount", type=int, help="sat")
    f.add_argument("--mint")
    b = sub.add_parser("balance")
    b.add_argument("wallet_dir")
    b.add_argument("--mint")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "keygen":
            print(keygen(a.file))
        elif a.cmd == "fund":
            if a.amount <= 0:
                raise PaymentError("amount must be a positive number of sat")
            bal = asyncio.run(fund(a.wallet_dir, a.amount, a.mint))
            print(f"funded {a.amount} sat; wallet {a.wallet_dir} now holds {bal} sat")
        else:
            print(asyncio.run(_balance(a.wallet_dir, a.mint)))
    except (PaymentError, FileExistsError) as e:
        print(f"cashu: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
