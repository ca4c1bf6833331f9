"""The daemon's SQLite database (WAL) in state_dir.

Only the asyncio thread and, for handshakes, the receive thread touch it;
a lock keeps their statements from interleaving on one connection.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS peers (
    public_key TEXT PRIMARY KEY,
    address    TEXT NOT NULL UNIQUE,
    first_seen REAL NOT NULL,
    last_seen  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


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
        except sqlite3.Error as e:
            raise StoreError(f"cannot open database {path}: {e}; check state_dir is writable "
                             "and not on a full disk") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- gateway: stable tunnel address per client key ---------------------------------

    def peer_addresses(self) -> dict[str, str]:
        return dict(self.execute("SELECT public_key, address FROM peers"))

    def assign_address(self, public_key: str, network: ipaddress.IPv4Interface) -> str:
        """The peer's address, allocating the lowest free one in the prefix on first contact."""
        now = time.time()
        with self._lock:
            row = self._db.execute("SELECT address FROM peers WHERE public_key=?", (public_key,)).fetchone()
            if row:
                self._db.execute("UPDATE peers SET last_seen=? WHERE public_key=?", (now, public_key))
                return row[0]
            taken = {r[0] for r in self._db.execute("SELECT address FROM peers")}
            for host in network.network.hosts():
                if host == network.ip or str(host) in taken:
                    continue
                self._db.execute("INSERT INTO peers VALUES (?,?,?,?)", (public_key, str(host), now, now))
                return str(host)
        raise StoreError(f"address pool {network.network} is full ({len(taken)} peers); "
                         "use a larger [network] address prefix")
