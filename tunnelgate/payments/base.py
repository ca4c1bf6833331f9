"""Payment backend interface, shared types and the payee's durable journal.

Amounts are integers in millisatoshi (msat), never floats. A backend comes in
two halves: the client's :class:`PayerBackend` turns accepted contract terms
into a proof string sent in-band (``PAY``); the gateway's
:class:`PayeeBackend` verifies it. Verification is idempotent and binding: the
payee records every proof in a :class:`Journal` (SQLite, WAL) *before* it takes
the money, so the same proof verified twice is one payment, a proof can pay
for one contract only, and a payment taken just before a crash is found again
after the restart (``Journal.credit(peer)``).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping

Status = Literal["pending", "confirmed", "invalid"]
STATUSES = ("pending", "confirmed", "invalid")


class PaymentError(Exception):
    """A payment could not be made or checked. The message says what failed
    and what to do about it."""


@dataclass(frozen=True)
class Terms:
    """What one contract costs and where to pay it.

    ``peer``: on the gateway, the client's public key (hex/base64);
    ``account``: what the gateway advertised in PROPOSE (cashu: JSON with mint
    URLs and the P2PK public key; bitcoind: an address for this contract).
    """

    contract_id: str
    amount_msat: int
    peer: str = ""
    account: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.amount_msat, int) or isinstance(self.amount_msat, bool):
            raise TypeError(f"Terms.amount_msat must be an int (msat), got {self.amount_msat!r}")
        if self.amount_msat < 0:
            raise ValueError(f"Terms.amount_msat must be >= 0, got {self.amount_msat}")
        if not self.contract_id:
            raise ValueError("Terms.contract_id must not be empty")

    @property
    def amount_sat(self) -> int:
        """The amount in whole satoshis, rounded up."""
        return msat_to_sat_ceil(self.amount_msat)


@dataclass(frozen=True)
class Verdict:
    """The payee's view of one proof: ``pending`` (looks right, money not final
    yet: grace may start), ``confirmed`` or ``invalid`` (with a reason).
    ``amount_msat``: what the proof is worth, for credit."""

    status: Status
    reason: str = ""
    amount_msat: int = 0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"Verdict.status must be one of {STATUSES}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status != "invalid"


def msat_to_sat_ceil(msat: int) -> int:
    return -(-int(msat) // 1000)


def proof_key(backend: str, *parts: str) -> str:
    """A stable journal key for a proof: backend name + sha256 of its identity."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return f"{backend}:{h.hexdigest()}"


class PayerBackend:
    """Client side. Subclasses set ``name`` and ``real_money``."""

    name: str = "?"
    real_money: bool = True

    async def offer(self) -> dict:
        """What the client tells the gateway about how it pays (may be empty)."""
        return {}

    async def pay(self, terms: Terms) -> str:  # pragma: no cover - interface
        """Pay ``terms``; return the proof string sent in-band. Raises PaymentError."""
        raise NotImplementedError

    async def balance_msat(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def fee_msat(self, amount_msat: int) -> int:
        """What paying ``amount_msat`` costs on top (estimate shown to the user)."""
        return 0

    async def close(self) -> None:
        """Release connections/files. Safe to call twice."""


class PayeeBackend:
    """Gateway side. Subclasses set ``name`` and ``real_money`` and take a Journal."""

    name: str = "?"
    real_money: bool = True
    # True: every contract gets its own account (account_for(contract_id) makes a new one, e.g.
    # a fresh address); False: account_for gives the same account to every contract
    per_contract_account: bool = False

    def __init__(self, journal: "Journal") -> None:
        if not isinstance(journal, Journal):
            raise TypeError("a payee backend needs a tunnelgate.payments.base.Journal")
        self.journal = journal

    async def account_for(self, contract_id: str) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    async def verify(self, proof: str, terms: Terms) -> Verdict:  # pragma: no cover
        raise NotImplementedError

    async def poll(self, contract_id: str) -> Verdict:
        """The current verdict for a contract's payment (re-checks pending ones)."""
        rec = self.journal.for_contract(contract_id)
        if rec is None:
            return Verdict("invalid", f"no payment recorded for contract {contract_id}")
        return rec.verdict()

    async def close(self) -> None:
        """Release connections/files. Safe to call twice."""

    # Helpers shared by the real payees -----------------------------------

    def _precheck(self, key: str, terms: Terms) -> "Record | Verdict | None":
        """Journal checks before looking at a proof's content: a known proof
        returns its Record (same contract) or an invalid Verdict (another
        contract); a contract already paid by another live proof is invalid.
        None: new proof, go on."""
        rec = self.journal.get(key)
        if rec is not None:
            if rec.contract_id != terms.contract_id:
                return Verdict(
                    "invalid",
                    f"this proof already paid for contract {rec.contract_id}; "
                    "a proof pays for one contract only",
                )
            return rec
        other = self.journal.for_contract(terms.contract_id)
        if other is not None and other.status != "invalid":
            return Verdict(
                "invalid",
                f"contract {terms.contract_id} is already paid by another proof "
                f"({other.status}); not taking a second payment",
            )
        return None


@dataclass(frozen=True)
class Record:
    key: str
    contract_id: str
    peer: str
    backend: str
    amount_msat: int
    status: Status
    reason: str
    detail: dict = field(default_factory=dict)
    applied: bool = False
    created: float = 0.0
    updated: float = 0.0

    def verdict(self) -> Verdict:
        return Verdict(self.status, self.reason, self.amount_msat)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS payments (
    key TEXT PRIMARY KEY,
    contract_id TEXT NOT NULL,
    peer TEXT NOT NULL,
    backend TEXT NOT NULL,
    amount_msat INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending','confirmed','invalid')),
    reason TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '{}',
    applied INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS payments_contract ON payments(contract_id);
CREATE INDEX IF NOT EXISTS payments_peer ON payments(peer, status, applied);
CREATE TABLE IF NOT EXISTS credit (
    peer TEXT PRIMARY KEY,
    balance_msat INTEGER NOT NULL CHECK (balance_msat >= 0)
);
CREATE TABLE IF NOT EXISTS credit_log (
    ref TEXT PRIMARY KEY,
    peer TEXT NOT NULL,
    delta_msat INTEGER NOT NULL,
    contract_id TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    contract_id TEXT NOT NULL,
    backend TEXT NOT NULL,
    account TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (contract_id, backend)
);
"""


class Journal:
    """The payee's durable record of proofs: key → contract, peer, amount,
    status. SQLite in WAL mode with synchronous=FULL (a payment is on disk
    before the money is taken). Thread-safe (backends call it from
    ``asyncio.to_thread`` too); every call is one short transaction.

    After a crash, ``credit(peer)`` is what that peer has paid (confirmed) that
    the daemon has not yet turned into quota; the daemon calls
    ``mark_applied(contract_id)`` once it has recorded the contract as paid.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        d = os.path.dirname(self.path)
        if d:
            os.makedirs(d, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise PaymentError(f"cannot open the payment journal {self.path}: {e}; "
                               "check the state_dir exists and is writable") from e
        try:
            os.chmod(self.path, 0o600)
        except OSError:
            pass
        self._lock = threading.RLock()
        self._batch: list = []
        self._batch_lock = threading.Lock()
        self._batch_running = False

    async def batched(self, fn, *args):
        """``fn(*args)`` (journal calls) off the event loop, in a group commit: the calls queued
        while one transaction is written share the next one (one fsync for all), each in its
        own savepoint so a failing one is undone alone.  Returns (or raises) once its
        transaction is on disk, so "recorded before the money counts" still holds."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._batch_lock:
            self._batch.append((fn, args, fut, loop))
            start, self._batch_running = not self._batch_running, True
        if start:
            loop.run_in_executor(None, self._drain)
        return await fut

    def _drain(self) -> None:
        while True:
            with self._batch_lock:
                batch, self._batch = self._batch, []
                if not batch:
                    self._batch_running = False
                    return
            try:
                results = self._run_batch(batch)
            except Exception as e:              # the commit failed: none of it happened
                results = [(None, e)] * len(batch)
            for (_, _, fut, loop), (r, e) in zip(batch, results):
                loop.call_soon_threadsafe(_resolve, fut, r, e)

    def _run_batch(self, batch: list) -> list:
        db, results = self._db, []
        with self._lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                for fn, args, _, _ in batch:
                    db.execute("SAVEPOINT b")
                    try:
                        results.append((fn(*args), None))
                        db.execute("RELEASE b")
                    except Exception as e:
                        db.execute("ROLLBACK TO b")
                        db.execute("RELEASE b")
                        results.append((None, e))
                db.execute("COMMIT")
            except BaseException:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
        return results

    def atomic(self):
        """Hold the journal across several calls from one thread (e.g. the checks and the
        insert of one proof): ``with journal.atomic(): ...``."""
        return self._lock

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass

    # -- reads -----------------------------------------------------------
    @staticmethod
    def _row(r: tuple | None) -> Record | None:
        if r is None:
            return None
        return Record(key=r[0], contract_id=r[1], peer=r[2], backend=r[3], amount_msat=r[4],
                      status=r[5], reason=r[6], detail=json.loads(r[7] or "{}"),
                      applied=bool(r[8]), created=r[9], updated=r[10])

    _COLS = "key, contract_id, peer, backend, amount_msat, status, reason, detail, applied, created, updated"

    def get(self, key: str) -> Record | None:
        with self._lock:
            r = self._db.execute(f"SELECT {self._COLS} FROM payments WHERE key=?", (key,)).fetchone()
        return self._row(r)

    def for_contract(self, contract_id: str) -> Record | None:
        """The contract's live payment (confirmed, else pending), else its
        latest invalid one, else None."""
        with self._lock:
            r = self._db.execute(
                f"SELECT {self._COLS} FROM payments WHERE contract_id=? ORDER BY "
                "CASE status WHEN 'confirmed' THEN 0 WHEN 'pending' THEN 1 ELSE 2 END, "
                "updated DESC LIMIT 1", (contract_id,)).fetchone()
        return self._row(r)

    def records(self, status: str | None = None, peer: str | None = None) -> list[Record]:
        q, args = f"SELECT {self._COLS} FROM payments WHERE 1=1", []
        if status is not None:
            q += " AND status=?"
            args.append(status)
        if peer is not None:
            q += " AND peer=?"
            args.append(peer)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY created", args).fetchall()
        return [self._row(r) for r in rows]  # type: ignore[misc]

    def credit(self, peer: str) -> int:
        """msat this peer paid (confirmed) that is not yet marked applied."""
        with self._lock:
            (n,) = self._db.execute(
                "SELECT COALESCE(SUM(amount_msat),0) FROM payments WHERE peer=? AND "
                "status='confirmed' AND applied=0", (peer,)).fetchone()
        return int(n)

    def unapplied(self, peer: str | None = None) -> list[Record]:
        return [r for r in self.records("confirmed", peer) if not r.applied]

    # -- writes ----------------------------------------------------------
    def insert(self, key: str, contract_id: str, peer: str, backend: str, amount_msat: int,
               status: Status, reason: str = "", detail: Mapping[str, Any] | None = None
               ) -> tuple[Record, bool]:
        """Record a new proof. Returns (record, True) if inserted, or the
        existing record and False if the key was already there (a race)."""
        if not isinstance(amount_msat, int):
            raise TypeError("amount_msat must be an int")
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO payments (key, contract_id, peer, backend, amount_msat,"
                " status, reason, detail, applied, created, updated) VALUES (?,?,?,?,?,?,?,?,0,?,?)",
                (key, contract_id, peer, backend, amount_msat, status, reason,
                 json.dumps(dict(detail or {})), now, now))
            inserted = cur.rowcount == 1
        rec = self.get(key)
        assert rec is not None
        return rec, inserted

    def update(self, key: str, *, status: Status | None = None, reason: str | None = None,
               amount_msat: int | None = None, detail: Mapping[str, Any] | None = None) -> Record:
        """Change a record. A confirmed record never goes back to pending."""
        with self._lock:
            rec = self.get(key)
            if rec is None:
                raise KeyError(key)
            new_status = status or rec.status
            if rec.status == "confirmed" and new_status == "pending":
                new_status = "confirmed"
            d = dict(rec.detail)
            if detail:
                d.update(detail)
            self._db.execute(
                "UPDATE payments SET status=?, reason=?, amount_msat=?, detail=?, updated=? WHERE key=?",
                (new_status, rec.reason if reason is None else reason,
                 rec.amount_msat if amount_msat is None else amount_msat,
                 json.dumps(d), time.time(), key))
        out = self.get(key)
        assert out is not None
        return out

    def mark_applied(self, contract_id: str) -> None:
        """The daemon has turned this contract's confirmed payment into quota."""
        with self._lock:
            self._db.execute("UPDATE payments SET applied=1 WHERE contract_id=? AND status='confirmed'",
                             (contract_id,))

    def take_credit(self, peer: str) -> tuple[int, list[str]]:
        """Atomically mark all of ``peer``'s unapplied confirmed payments
        applied; returns (msat, contract ids)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT contract_id, amount_msat FROM payments WHERE peer=? AND "
                    "status='confirmed' AND applied=0", (peer,)).fetchall()
                self._db.execute("UPDATE payments SET applied=1 WHERE peer=? AND "
                                 "status='confirmed' AND applied=0", (peer,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return sum(r[1] for r in rows), [r[0] for r in rows]

    # -- prepaid credit per peer ---------------------------------------------
    # What a peer paid beyond a contract's cost (prepay), and payments the daemon took but
    # could not turn into a contract (recovered after a crash), pay later contracts. Every
    # change has a unique ``ref`` in credit_log, so replaying one (after a crash) changes
    # nothing.

    def credit_balance(self, peer: str) -> int:
        with self._lock:
            r = self._db.execute("SELECT balance_msat FROM credit WHERE peer=?", (peer,)).fetchone()
        return int(r[0]) if r else 0

    def credit_balances(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT peer, balance_msat FROM credit WHERE balance_msat > 0"))

    def _credit_change(self, peer: str, delta: int, ref: str, contract_id: str, note: str) -> bool:
        """Inside a transaction: apply delta once per ref; False if ref was applied before."""
        cur = self._db.execute("INSERT OR IGNORE INTO credit_log (ref, peer, delta_msat, contract_id, note,"
                               " created) VALUES (?,?,?,?,?,?)",
                               (ref, peer, delta, contract_id, note, time.time()))
        if cur.rowcount != 1:
            return False
        cur = self._db.execute("UPDATE credit SET balance_msat = balance_msat + ? WHERE peer=?", (delta, peer))
        if cur.rowcount != 1:
            self._db.execute("INSERT INTO credit (peer, balance_msat) VALUES (?, ?)", (peer, delta))
        return True

    def _tx(self, fn):
        with self._lock:
            if self._db.in_transaction:      # inside a group commit (batched): a savepoint
                self._db.execute("SAVEPOINT tx")
                try:
                    out = fn()
                    self._db.execute("RELEASE tx")
                except BaseException:
                    self._db.execute("ROLLBACK TO tx")
                    self._db.execute("RELEASE tx")
                    raise
                return out
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return out

    def add_credit(self, peer: str, msat: int, ref: str, contract_id: str = "", note: str = "") -> int:
        """Credit ``peer`` with ``msat`` once per ``ref``; returns the balance."""
        if not isinstance(msat, int) or msat < 0:
            raise ValueError("credit must be a non-negative int (msat)")
        if msat:
            self._tx(lambda: self._credit_change(peer, msat, ref, contract_id, note))
        return self.credit_balance(peer)

    def spend_credit(self, peer: str, msat: int, contract_id: str) -> int | None:
        """Pay ``contract_id`` from ``peer``'s credit: the balance left, or None if it is
        short (nothing taken). Paying the same contract again takes nothing more."""
        ref = f"spend:{contract_id}"

        def run():
            if self._db.execute("SELECT 1 FROM credit_log WHERE ref=?", (ref,)).fetchone():
                return True
            r = self._db.execute("SELECT balance_msat FROM credit WHERE peer=?", (peer,)).fetchone()
            if (int(r[0]) if r else 0) < msat:
                return False
            return self._credit_change(peer, -msat, ref, contract_id, "contract paid from credit")
        if not self._tx(run):
            return None
        return self.credit_balance(peer)

    def credited(self, contract_id: str) -> int:
        """msat of this contract's payment already turned into credit (its prepaid surplus, or
        all of it when no contract could take it)."""
        with self._lock:
            (n,) = self._db.execute(
                "SELECT COALESCE(SUM(delta_msat),0) FROM credit_log WHERE contract_id=? AND delta_msat > 0 "
                "AND (ref=? OR ref=?)", (contract_id, f"surplus:{contract_id}", f"recovered:{contract_id}")
            ).fetchone()
        return int(n)

    def credit_spends(self) -> list[tuple[str, str, int]]:
        """(contract id, peer, msat) of every contract paid from credit."""
        with self._lock:
            rows = self._db.execute("SELECT contract_id, peer, -delta_msat FROM credit_log "
                                    "WHERE ref LIKE 'spend:%' ORDER BY created").fetchall()
        return [(r[0], r[1], int(r[2])) for r in rows]

    def paid_from_credit(self, contract_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM credit_log WHERE ref=?",
                                    (f"spend:{contract_id}",)).fetchone() is not None

    def settle(self, contract_id: str, peer: str, credit_msat: int, ref: str, note: str) -> int:
        """One transaction: the contract's confirmed payment is applied (``mark_applied``) and
        ``credit_msat`` of it (a prepaid surplus, or all of it when no contract could take it)
        goes to ``peer``'s credit, once per ``ref``. Returns the balance."""
        def run():
            self._db.execute("UPDATE payments SET applied=1 WHERE contract_id=? AND status='confirmed'",
                             (contract_id,))
            if credit_msat > 0:
                self._credit_change(peer, credit_msat, ref, contract_id, note)
        self._tx(run)
        return self.credit_balance(peer)

    # -- per-contract accounts (addresses handed out) ----------------------
    def account(self, contract_id: str, backend: str) -> str | None:
        with self._lock:
            r = self._db.execute("SELECT account FROM accounts WHERE contract_id=? AND backend=?",
                                 (contract_id, backend)).fetchone()
        return r[0] if r else None

    def set_account(self, contract_id: str, backend: str, account: str) -> str:
        """Remember the account for a contract; returns the one stored first."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO accounts (contract_id, backend, account, created)"
                             " VALUES (?,?,?,?)", (contract_id, backend, account, time.time()))
        got = self.account(contract_id, backend)
        assert got is not None
        return got


def _resolve(fut, result, exc) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


async def to_thread(fn, *args, **kwargs):
    """Run blocking work (RPC, SQLite) off the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def require(settings: Mapping[str, Any], key: str, backend: str) -> Any:
    if key not in settings or settings[key] in (None, ""):
        raise PaymentError(f"payment backend {backend!r} needs setting {key!r} (payment.{key} in the config)")
    return settings[key]


def as_list(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [s for s in (x.strip() for x in v.replace(",", " ").split()) if s]
    if isinstance(v, Iterable):
        return [str(x) for x in v]
    raise TypeError(f"expected a list of strings, got {v!r}")
