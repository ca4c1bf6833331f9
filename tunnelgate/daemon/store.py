"""The daemon's SQLite database (WAL) in state_dir.

Only the asyncio thread and, for handshakes, the receive thread touch it;
a lock keeps their statements from interleaving on one connection.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import sqlite3
import threading
import time
from pathlib import Path

from tunnelgate.protocol.contract import TERMINAL

SCHEMA = """
CREATE TABLE IF NOT EXISTS peers (
    public_key TEXT PRIMARY KEY,
    address    TEXT NOT NULL UNIQUE,
    first_seen REAL NOT NULL,
    last_seen  REAL NOT NULL,
    handshake_ts TEXT       -- the latest INIT timestamp accepted (u64 as decimal text); see _migrate
);
-- keys whose lease was reclaimed (leases.py): their latest INIT timestamp stays a replay
CREATE TABLE IF NOT EXISTS retired_peers (
    public_key   TEXT PRIMARY KEY,
    handshake_ts TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- the contract engine's state (contracts, metered bytes), saved every second and on stop
CREATE TABLE IF NOT EXISTS snapshots (
    name     TEXT PRIMARY KEY,
    data     TEXT NOT NULL,
    saved_at REAL NOT NULL
);
-- the gateway engine's state, one row per record, written incrementally (only what changed)
-- in one transaction every second and on stop; `used`/`up`/`down` override data's counters
CREATE TABLE IF NOT EXISTS contracts (
    id    TEXT PRIMARY KEY,
    peer  TEXT NOT NULL,
    data  TEXT NOT NULL,
    used  INTEGER NOT NULL,
    up    INTEGER NOT NULL,
    down  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS flows (
    id    TEXT PRIMARY KEY,
    data  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS peers_standing (
    peer  TEXT PRIMARY KEY,
    data  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          REAL NOT NULL,
    kind        TEXT NOT NULL,
    contract_id TEXT,
    peer        TEXT,
    destination TEXT,
    reason      TEXT,
    amount_msat INTEGER NOT NULL DEFAULT 0,
    data        TEXT
);
-- client: a proof is stored before it is sent, so a restart re-sends it instead of paying again
CREATE TABLE IF NOT EXISTS client_payments (
    contract_id TEXT PRIMARY KEY,
    method      TEXT NOT NULL,
    proof       TEXT NOT NULL,
    amount_msat INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    state       TEXT NOT NULL
);
"""


EVENTS_MAX = 10_000     # rows kept in the events table (the newest)
_EVENT_INSERT = ("INSERT INTO events (ts, kind, contract_id, peer, destination, reason, amount_msat, data) "
                 "VALUES (?,?,?,?,?,?,?,?)")
# ids only grow (AUTOINCREMENT): all but the newest N rows
_EVENT_TRIM = "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?"


# a contract record's state, for the queries that tell ended records from the others
_STATE = "json_extract(data, '$.state')"
_ENDED = "(" + ",".join(f"'{s.value}'" for s in sorted(TERMINAL, key=lambda s: s.value)) + ")"


class StoreError(Exception):
    pass


class Store:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._migrate()
        except sqlite3.Error as e:
            raise StoreError(f"cannot open database {path}: {e}; check state_dir is writable "
                             "and not on a full disk") from None

    def _migrate(self) -> None:
        # databases from before handshake replay protection survived restarts
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(peers)")}
        if "handshake_ts" not in columns:
            self._db.execute("ALTER TABLE peers ADD COLUMN handshake_ts TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def meta(self, key: str) -> str | None:
        rows = self.execute("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, value))

    # --- contract engine state and history ---------------------------------------------

    def save_snapshot(self, name: str, data: str) -> None:
        self.execute("INSERT OR REPLACE INTO snapshots VALUES (?,?,?)", (name, data, time.time()))

    def load_snapshot(self, name: str) -> str | None:
        rows = self.execute("SELECT data FROM snapshots WHERE name=?", (name,))
        return rows[0][0] if rows else None

    @contextlib.contextmanager
    def _transaction(self, events: list[tuple] = ()):
        """One write transaction under the store's lock, opened with the ``events`` rows
        (trimmed to EVENTS_MAX), so the history never misses what the records say."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if events:
                    db.executemany(_EVENT_INSERT, events)
                    db.execute(_EVENT_TRIM, (EVENTS_MAX,))
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def save_changes(self, name: str, ch: dict, drop_snapshot: bool = False,
                     events: list[tuple] = ()) -> None:
        """Write the engine's ``snapshot_changes()`` and ``events`` (EventLog rows that go
        with the changes) in one transaction; migrating, drop the old whole-state snapshot
        row in the same one."""
        with self._transaction(events) as db:
            if ch["contracts"]:
                db.executemany("INSERT OR REPLACE INTO contracts VALUES (?,?,?,?,?,?)",
                               [(d["contract_id"], d["peer"], json.dumps(d), d["used"], d["up"], d["down"])
                                for d in ch["contracts"]])
            if ch["counters"]:
                db.executemany("UPDATE contracts SET used=?, up=?, down=? WHERE id=?",
                               [(u, up, down, cid) for cid, u, up, down in ch["counters"]])
            if ch["removed"]:
                db.executemany("DELETE FROM contracts WHERE id=?", [(i,) for i in ch["removed"]])
            if ch["flows"]:
                db.executemany("INSERT OR REPLACE INTO flows VALUES (?,?)",
                               [(fid, json.dumps(d)) for fid, d in ch["flows"]])
            if ch["flows_removed"]:
                db.executemany("DELETE FROM flows WHERE id=?", [(i,) for i in ch["flows_removed"]])
            if ch["peers"]:
                db.executemany("INSERT OR REPLACE INTO peers_standing VALUES (?,?)",
                               [(k, json.dumps(d)) for k, d in ch["peers"].items()])
            db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (f"{name}.seq", str(ch["seq"])))
            if drop_snapshot:
                db.execute("DELETE FROM snapshots WHERE name=?", (name,))

    def load_records(self, name: str, ended_keep: int | None = None) -> dict | None:
        """The records save_changes wrote, as a whole snapshot (``engine.restore`` format);
        None when there are none.  ``ended_keep``: of the ended contracts' records (kept for
        ever: the history) only the newest that many, as the engine keeps no more of them in
        memory; reading all of them made a restart slower with every contract ever sold."""
        ended = ("" if ended_keep is None else
                 f" WHERE {_STATE} NOT IN {_ENDED} UNION ALL SELECT * FROM (SELECT data, used, up, down "
                 f"FROM contracts WHERE {_STATE} IN {_ENDED} ORDER BY rowid DESC LIMIT {int(ended_keep)})")
        with self._lock:
            seq = self._db.execute("SELECT value FROM meta WHERE key=?", (f"{name}.seq",)).fetchone()
            if seq is None:
                return None
            contracts = []
            for data, used, up, down in self._db.execute("SELECT data, used, up, down FROM contracts" + ended):
                d = json.loads(data)
                d["used"], d["up"], d["down"] = used, up, down
                contracts.append(d)
            flows = [json.loads(d) for (d,) in self._db.execute("SELECT data FROM flows")]
            peers = {k: json.loads(d) for k, d in self._db.execute("SELECT peer, data FROM peers_standing")}
        return {"version": 1, "seq": int(seq[0]), "contracts": contracts, "flows": flows, "peers": peers}

    def contract_states(self) -> dict[str, tuple[str, bool]]:
        """contract id -> (state, paid) of every contract record, ended ones included."""
        with self._lock:
            rows = self._db.execute("SELECT id, json_extract(data, '$.state'), json_extract(data, '$.paid') "
                                    "FROM contracts").fetchall()
        return {cid: (state, bool(paid)) for cid, state, paid in rows}

    def add_events(self, rows: list[tuple], keep: int = EVENTS_MAX) -> None:
        """Appends rows and drops all but the newest ``keep``."""
        with self._lock:
            self._db.executemany(_EVENT_INSERT, rows)
            self._db.execute(_EVENT_TRIM, (keep,))

    def save_snapshot_with_events(self, name: str, data: str, events: list[tuple]) -> None:
        """A whole-state snapshot and the events that go with it, in one transaction."""
        with self._transaction(events) as db:
            db.execute("INSERT OR REPLACE INTO snapshots VALUES (?,?,?)", (name, data, time.time()))

    def events(self, limit: int = 200, kinds: tuple[str, ...] = ()) -> list[dict]:
        where = f"WHERE kind IN ({','.join('?' * len(kinds))})" if kinds else ""
        rows = self.execute(f"SELECT ts, kind, contract_id, peer, destination, reason, amount_msat, data "
                            f"FROM events {where} ORDER BY id DESC LIMIT ?", (*kinds, limit))
        keys = ("ts", "kind", "contract_id", "peer", "destination", "reason", "amount_msat", "data")
        return [dict(zip(keys, r)) for r in reversed(rows)]

    # --- client: proofs sent, so a restart never pays twice ----------------------------

    def client_payment(self, contract_id: str) -> tuple[str, str, int, str] | None:
        rows = self.execute("SELECT method, proof, amount_msat, state FROM client_payments "
                            "WHERE contract_id=?", (contract_id,))
        return rows[0] if rows else None

    def record_client_payment(self, contract_id: str, method: str, proof: str, amount_msat: int) -> None:
        self.execute("INSERT OR IGNORE INTO client_payments VALUES (?,?,?,?,?,?)",
                     (contract_id, method, proof, amount_msat, time.time(), "sent"))

    def set_client_payment_state(self, contract_id: str, state: str) -> None:
        self.execute("UPDATE client_payments SET state=? WHERE contract_id=?", (state, contract_id))

    def client_payments(self) -> list[tuple]:
        return self.execute("SELECT contract_id, method, amount_msat, created_at, state FROM client_payments "
                            "ORDER BY created_at")

    # --- gateway: address leases per client key (the policy is leases.py) ---------------

    def peer_addresses(self) -> dict[str, str]:
        return dict(self.execute("SELECT public_key, address FROM peers"))

    def handshake_timestamps(self) -> dict[str, int]:
        """Peer key -> the latest INIT timestamp recorded for it, leased or retired."""
        out: dict[str, int] = {}
        for k, ts in self.execute("SELECT public_key, handshake_ts FROM retired_peers UNION ALL "
                                  "SELECT public_key, handshake_ts FROM peers WHERE handshake_ts IS NOT NULL"):
            out[k] = max(out.get(k, 0), int(ts))
        return out

    def assign_address(self, public_key: str, network: ipaddress.IPv4Interface,
                       handshake_ts: int | None = None, now: float | None = None) -> str | None:
        """The peer's address, leasing the next free one in the prefix on first contact;
        None when the pool is full (leases.Leases then reclaims one and asks again).
        ``handshake_ts``: the INIT being answered; written in the same statement as
        last_seen, so replay protection costs the receive thread no write of its own and is
        on disk before the answer leaves."""
        now = time.time() if now is None else now
        ts = None if handshake_ts is None else str(handshake_ts)
        with self._lock:
            row = self._db.execute("SELECT address FROM peers WHERE public_key=?", (public_key,)).fetchone()
            if row:
                self._db.execute("UPDATE peers SET last_seen=?, handshake_ts=COALESCE(?, handshake_ts) "
                                 "WHERE public_key=?", (now, ts, public_key))
                return row[0]
            # Start after the newest assignment and probe the UNIQUE index, so a new peer
            # costs O(1) however many there are (this runs on the receive thread); a full
            # pool is told by the count, not by probing every address (a stream of new
            # keys meets a full pool at every handshake)
            net = network.network
            first, last = int(net.network_address) + 1, int(net.broadcast_address) - 1
            if self._db.execute("SELECT COUNT(*) FROM peers").fetchone()[0] >= last - first:
                return None
            row = self._db.execute("SELECT address FROM peers ORDER BY rowid DESC LIMIT 1").fetchone()
            start = int(ipaddress.IPv4Address(row[0])) + 1 if row else first
            size = last - first + 1
            for i in range(size):
                host = ipaddress.IPv4Address(first + (start - first + i) % size)
                if host == network.ip or self._db.execute("SELECT 1 FROM peers WHERE address=?",
                                                          (str(host),)).fetchone():
                    continue
                self._db.execute("INSERT INTO peers (public_key, address, first_seen, last_seen, handshake_ts) "
                                 "VALUES (?,?,?,?,?)", (public_key, str(host), now, now, ts))
                return str(host)
        return None

    def lease_count(self) -> int:
        return self.execute("SELECT COUNT(*) FROM peers")[0][0]

    def leases_by_age(self, seen_before: float, limit: int) -> list[tuple[str, str, float]]:
        """(key, address, last_seen) of the leases last seen before ``seen_before``, the
        longest idle first (as stored: the caller knows newer in-memory times)."""
        return self.execute("SELECT public_key, address, last_seen FROM peers WHERE last_seen < ? "
                            "ORDER BY last_seen LIMIT ?", (seen_before, limit))

    def touch_leases(self, seen: dict[str, float]) -> None:
        """Newer last-seen times, one transaction (a lease reclaimed meanwhile stays gone)."""
        if seen:
            with self._transaction() as db:
                db.executemany("UPDATE peers SET last_seen=MAX(last_seen, ?) WHERE public_key=?",
                               [(t, k) for k, t in seen.items()])

    def release_leases(self, keys: list[str]) -> int:
        """Frees the leases of ``keys`` (their INIT timestamps kept as replays) and counts
        them in meta ``leases.reclaimed``; returns how many existed."""
        with self._transaction() as db:
            n = 0
            for key in keys:
                row = db.execute("SELECT handshake_ts FROM peers WHERE public_key=?", (key,)).fetchone()
                if row is None:
                    continue
                n += 1
                if row[0] is not None:
                    db.execute("INSERT OR REPLACE INTO retired_peers VALUES (?,?)", (key, row[0]))
                db.execute("DELETE FROM peers WHERE public_key=?", (key,))
            if n:
                db.execute("INSERT INTO meta VALUES ('leases.reclaimed', ?) ON CONFLICT(key) DO UPDATE "
                           "SET value = CAST(value AS INTEGER) + ?", (str(n), n))
        return n

    def leases_reclaimed(self) -> int:
        rows = self.execute("SELECT value FROM meta WHERE key='leases.reclaimed'")
        return int(rows[0][0]) if rows else 0
