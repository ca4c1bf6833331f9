import ipaddress

from tunnelgate.daemon.store import Store


def test_addresses_are_stable_per_key_and_skip_the_gateway(tmp_path):
    s = Store(tmp_path / "db")
    net = ipaddress.IPv4Interface("100.64.0.1/29")     # hosts .1-.6, .1 is the gateway
    got = [s.assign_address(f"k{i}", net) for i in range(5)]
    assert got == ["100.64.0.2", "100.64.0.3", "100.64.0.4", "100.64.0.5", "100.64.0.6"]
    assert s.assign_address("k2", net) == "100.64.0.4"
    assert s.assign_address("k5", net) is None         # full: leases.Leases reclaims one
    s.close()
    again = Store(tmp_path / "db")                     # a restart keeps them
    assert again.peer_addresses()["k0"] == "100.64.0.2"


def test_a_freed_address_is_reused_after_wrapping(tmp_path):
    s = Store(tmp_path / "db")
    net = ipaddress.IPv4Interface("100.64.0.1/29")
    for i in range(5):
        s.assign_address(f"k{i}", net)
    s.execute("DELETE FROM peers WHERE public_key='k1'")
    assert s.assign_address("new", net) == "100.64.0.3"


def test_handshake_timestamps_survive_a_restart(tmp_path):
    s = Store(tmp_path / "db")
    net = ipaddress.IPv4Interface("100.64.0.1/24")
    s.assign_address("new", net, 1_700_000_000_000_000_001)
    s.assign_address("old", net, 5)
    s.assign_address("old", net, 2**64 - 1)           # any u64 the INIT can carry
    s.assign_address("old", net)                      # no timestamp given: the last one stays
    s.assign_address("none", net)
    s.close()
    again = Store(tmp_path / "db")
    assert again.handshake_timestamps() == {"new": 1_700_000_000_000_000_001, "old": 2**64 - 1}


def test_a_database_from_before_handshake_timestamps_is_migrated(tmp_path):
    import sqlite3
    db = sqlite3.connect(tmp_path / "db")
    db.execute("CREATE TABLE peers (public_key TEXT PRIMARY KEY, address TEXT NOT NULL UNIQUE, "
               "first_seen REAL NOT NULL, last_seen REAL NOT NULL)")
    db.execute("INSERT INTO peers VALUES ('k0', '100.64.0.2', 1, 1)")
    db.commit()
    db.close()
    s = Store(tmp_path / "db")
    net = ipaddress.IPv4Interface("100.64.0.1/24")
    assert s.handshake_timestamps() == {}
    assert s.assign_address("k0", net, 7) == "100.64.0.2"
    assert s.assign_address("k1", net, 9) == "100.64.0.3"
    assert s.handshake_timestamps() == {"k0": 7, "k1": 9}
