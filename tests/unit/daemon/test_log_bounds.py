"""Events and log lines stay bounded when a peer makes the gateway say the same thing
many times: the events table keeps its newest rows, repeated lines are rate-limited,
and a backgrounded daemon does not copy its log into daemon.stderr."""
import logging
import subprocess
import sys

from tunnelgate.daemon import market
from tunnelgate.daemon.lograte import LogLimiter
from tunnelgate.daemon.store import EVENTS_MAX, Store
from tunnelgate.protocol import events as E
from tunnelgate.protocol.messages import Propose


def test_events_table_keeps_the_newest_rows(tmp_path):
    st = Store(tmp_path / "db.sqlite")
    row = lambda i: (float(i), "proposed", f"c{i}", None, None, "", 0, "{}")   # noqa: E731
    for b in range(3):
        st.add_events([row(b * 7000 + i) for i in range(7000)])
    (n,) = st.execute("SELECT COUNT(*) FROM events")[0]
    assert n == EVENTS_MAX
    assert st.events(limit=1)[0]["contract_id"] == "c20999"
    assert st.execute("SELECT MIN(ts) FROM events")[0][0] == 21000 - EVENTS_MAX


def test_limiter_passes_a_burst_then_counts():
    lim = LogLimiter(burst=3, interval_s=10)
    got = [lim.allow("k", 0.0 + i * 0.001) for i in range(100)]
    assert got[:3] == [0, 0, 0] and got[3:] == [None] * 97
    assert lim.allow("other", 0.5) == 0                     # keys are separate
    assert lim.allow("k", 10.5) == 97                       # next window: the count comes along
    lim.allow("k", 10.6), lim.allow("k", 10.7), lim.allow("k", 10.8)
    assert lim.drain(15.0) == []                            # window not over yet
    assert lim.drain(21.0) == [("k", 1)]


def test_event_log_lines_are_bounded(tmp_path, caplog):
    ev = market.EventLog(Store(tmp_path / "db.sqlite"))
    caplog.set_level(logging.INFO, logger="tunnelgate.contracts")
    for i in range(5000):
        ev.add(E.Proposed(E.SELLER, b"\x01" * 32, f"c{i}", f"198.18.{i >> 8}.{i & 255}"))
    ev.flush()
    lines = [r for r in caplog.records if r.name == "tunnelgate.contracts"]
    assert len(lines) <= 2 * ev.limiter.burst
    assert ev.store.execute("SELECT COUNT(*) FROM events")[0][0] == 5000    # all are stored


def test_queue_full_warning_is_rate_limited(caplog):
    ch = market.Channels(lambda peer, frame: None)
    caplog.set_level(logging.WARNING, logger="tunnelgate.contracts")
    msg = Propose("c1", "198.18.0.1", 1, 1, 1, ("dummy",), "a", 1, 0, 0)
    for _ in range(5000):
        ch.send(b"\x02" * 32, msg)
    assert ch.stats["queue_full"] > 3000
    assert len([r for r in caplog.records if "is full" in r.getMessage()]) <= ch.limiter.burst


def test_backgrounded_daemon_does_not_copy_its_log_to_stderr(tmp_path):
    code = ("import logging, pathlib, sys\n"
            "from tunnelgate.daemon.base import setup_logging\n"
            f"setup_logging(pathlib.Path({str(tmp_path / 'tg.log')!r}), False)\n"
            "logging.getLogger('tunnelgate').warning('hello from the daemon')\n")
    with open(tmp_path / "daemon.stderr", "wb") as err:
        subprocess.run([sys.executable, "-c", code], stderr=err, check=True)
    assert "hello from the daemon" in (tmp_path / "tg.log").read_text()
    assert (tmp_path / "daemon.stderr").read_text() == ""
    # a terminal or journald (a pipe here) still gets the lines
    r = subprocess.run([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, check=True)
    assert "hello from the daemon" in r.stderr
