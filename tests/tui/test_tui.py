"""The `tunnelgate tui` view, driven by textual's Pilot over recorded daemon snapshots.

tests/tui/data/*.json were recorded from a live lab (client and gateway `status`
+ `events` once a second while downloading; gateways.json: a client's `gateways` in the
market lab, three gateways, the third killed).  The layout snapshots in
tests/tui/snapshots/*.txt are the screen as text; after an intended layout change
regenerate them with  TUI_SNAPSHOT_UPDATE=1 .venv/bin/pytest tests/tui
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import os
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console
from textual.widgets import DataTable, Input, RichLog, Static

from tunnelgate import config as config_mod
from tunnelgate.daemon.control import ControlError, ControlServer
from tunnelgate.tui import run
from tunnelgate.tui import widgets as w
from tunnelgate.tui.app import MaxPriceScreen, TunnelgateApp
from tunnelgate.tui.source import RecordedSource, SocketSource, Source

DATA = Path(__file__).parent / "data"
SNAPSHOTS = Path(__file__).parent / "snapshots"


def recorded(role: str) -> list[dict]:
    return json.loads((DATA / f"{role}.json").read_text())


class Policy:
    """cfg.policy as the TUI reads it (max_price in price units, budgets in msat)."""
    max_price = 1_000_000
    max_spend_per_hour = 100_000
    max_spend_per_day = 1_000_000
    max_spend_total = 10_000_000


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    # event times are shown in local time; snapshots need a fixed zone
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def screen_text(app) -> str:
    """The screen as plain text (what export_screenshot draws, without the SVG)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system=None,
                      record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def log_text(app) -> str:
    return "\n".join(strip.text for strip in app.query_one("#events", RichLog).lines)


def table_rows(app, table_id: str) -> list[list[str]]:
    table = app.query_one(table_id, DataTable)
    return [[str(getattr(cell, "plain", cell)) for cell in table.get_row_at(i)] for i in range(table.row_count)]


async def until(pilot, predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the app"
        await pilot.pause(0.01)
    await pilot.pause()


async def poll(app, pilot, times: int = 1) -> None:
    for _ in range(times):
        n = app.polls
        await until(pilot, lambda: not app._polling)
        app.poll()
        await until(pilot, lambda: app.polls > n)


def client_app(source=None, **kw) -> TunnelgateApp:
    return TunnelgateApp(source or RecordedSource(recorded("client")), role="client", policy=Policy(),
                         config_path="client.toml", interval=None, **kw)


def gateway_app(source=None) -> TunnelgateApp:
    return TunnelgateApp(source or RecordedSource(recorded("gateway")), role="gateway",
                         config_path="gateway.toml", interval=None)


def run_app(app, body, size=(120, 36)):
    async def main():
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: app.polls >= 1)   # the poll on mount
            await body(app, pilot)
    asyncio.run(main())


# --- sources ----------------------------------------------------------------------------

def test_sources_follow_the_protocol():
    assert isinstance(RecordedSource([{"status": {}, "events": []}]), Source)
    assert isinstance(SocketSource("/nonexistent"), Source)


def test_recorded_source_replays_and_stops():
    snaps = recorded("client")
    src = RecordedSource([snaps[0], None, snaps[1]])
    assert src.status()["pid"] == snaps[0]["status"]["pid"]
    first = src.events(0)
    assert first == snaps[0]["events"]
    with pytest.raises(ControlError) as e:
        src.status()
    assert e.value.code == "not_running"
    src.status()
    assert src.events(first[-1]["ts"]) == snaps[1]["events"]


@pytest.fixture
def fake_daemon(tmp_path):
    """A real ControlServer on a Unix socket answering status/events from a recording,
    and `set` only when `daemon.accept_set` is true (the daemon side is new)."""
    snaps = recorded("client")

    class Daemon:
        path = tmp_path / "control.sock"
        accept_set = True
        sets: list[dict] = []

    def status(req):
        return snaps[-1]["status"]

    def events(req):
        return [e for s in snaps for e in s["events"] if e["ts"] > req.get("since", 0)]

    def set_(req):
        if not Daemon.accept_set:
            raise ControlError("bad_request", "no")
        Daemon.sets.append({k: v for k, v in req.items() if k != "cmd"})
        return {"changed": sorted(k for k in req if k != "cmd")}

    loop = asyncio.new_event_loop()
    server = ControlServer(Daemon.path, {"status": status, "events": events, "set": set_})
    started = threading.Event()

    def serve():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert started.wait(5)
    yield Daemon
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)


def test_socket_source_talks_to_a_control_socket(fake_daemon):
    src = SocketSource(fake_daemon.path)
    assert src.status()["role"] == "client"
    evs = src.events(0)
    assert evs and src.events(evs[-1]["ts"]) == []
    assert src.set(pause_buying=True) == {"changed": ["pause_buying"]}
    assert fake_daemon.sets == [{"pause_buying": True}]
    with pytest.raises(ControlError) as e:
        SocketSource(fake_daemon.path.with_name("nobody.sock")).status()
    assert e.value.code == "not_running"


# --- formatting -------------------------------------------------------------------------

def test_rates_from_counters_and_restart():
    r = w.Rates(2)
    assert r.feed(10.0, (0, 0)) is None
    assert r.feed(11.0, (1000, 500)) == (1000.0, 500.0)
    assert r.feed(11.0, (1500, 500)) is None          # same uptime: wait
    assert r.feed(13.0, (3000, 500)) == (1000.0, 0.0)
    assert r.feed(0.5, (10, 10)) is None               # daemon restarted: start over
    assert r.feed(1.5, (110, 10)) == (100.0, 0.0)
    assert r.recent(0, 60) == (100 + 2000 + 1000, 4.0)
    assert len(w.sparkline_data(r.series(0), window=10)) == 10


def test_budget_text_and_missing_wallet():
    text = w.budget_text({"hour": 50_000, "day": 50_000, "total": 50_000}, Policy(), None).plain
    assert "hour" in text and "50 sat / 100 sat" in text and " 50%" in text
    assert "wallet –" in text
    text = w.budget_text({"hour": 0}, None, {"balance_msat": 1_234_000}).plain
    assert "no limit" in text and "wallet 1,234 sat" in text


def test_contract_row_and_peer_revenue():
    st = recorded("gateway")[0]["status"]
    row = [getattr(c, "plain", c) for c in w.contract_row(st["market"]["contracts"][0], with_peer=True)]
    assert row[1:3] == ["198.18.2.2/32", "PAID"] and row[7] == "0.5 msat" and "%" in row[4]
    peers = w.peer_rows(st)
    assert peers == [["100.64.0.2", "198.18.1.2:50720", "2", "1.4 MB", "2 sat", "yes", "pvg5RVZfxtqM"]]


# --- the client view --------------------------------------------------------------------

def test_client_shows_recorded_contracts_budgets_and_events():
    async def body(app, pilot):
        await poll(app, pilot, 5)
        rows = table_rows(app, "#contracts")
        assert [r[:2] for r in rows] == [["198.18.2.2/32", "PAID"]]
        assert rows[0][5] == "1 sat paid" and rows[0][7] == "ab09e03973cc33e8"
        screen = screen_text(app)
        assert "connected 100.64.0.2/24 via 198.18.1.1:51900" in screen
        assert "3 sat / 100 sat" in screen and "wallet –" in screen
        assert "throughput ↓ 719.1 kB/s ↑ 2.2 kB/s" in screen
        assert "spend 1 sat in the last 5 s" in screen
        log = log_text(app)
        assert "paid" in log and "data limit reached" in log
        assert log.count("accepted") == 3   # every event once, although polls overlap
    run_app(client_app(), body)


def test_pause_toggles_send_set():
    src = RecordedSource(recorded("client"))

    async def body(app, pilot):
        await pilot.press("p")
        await until(pilot, lambda: app.sets_done == 1)
        assert src.sets == [{"pause_buying": True}]
        assert app.paused is True
        assert "PAUSED" in str(app.query_one("#buying", Static).render())
        assert "buying paused" in log_text(app)
        await pilot.press("p")
        await until(pilot, lambda: app.sets_done == 2)
        assert src.sets == [{"pause_buying": True}, {"pause_buying": False}]
        assert app.paused is False and "buying resumed" in log_text(app)
    run_app(client_app(src), body)


def test_daemon_reported_pause_state_wins():
    snaps = copy.deepcopy(recorded("client"))
    snaps[1]["status"]["pause_buying"] = True
    src = RecordedSource(snaps)

    async def body(app, pilot):
        await poll(app, pilot)
        assert app.paused is True
        await pilot.press("p")
        await until(pilot, lambda: app.sets_done == 1)
        assert src.sets == [{"pause_buying": False}]
    run_app(client_app(src), body)


def test_set_error_is_logged_not_fatal():
    src = RecordedSource(recorded("client"), set_error=ControlError(
        "unknown_command", "unknown command 'set'; known: contracts, events, status, stop"))

    async def body(app, pilot):
        await pilot.press("p")
        await until(pilot, lambda: app.sets_done == 1)
        assert "set pause_buying=true failed: unknown command 'set'" in log_text(app)
        assert app.paused is None and app.is_running
        await poll(app, pilot)   # still polling
    run_app(client_app(src), body)


def test_max_price_input_sends_set():
    src = RecordedSource(recorded("client"))

    async def body(app, pilot):
        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, MaxPriceScreen))
        assert "now 1 msat/KB" in screen_text(app)
        await pilot.press("x", "enter")          # not a price: stays open, says why
        assert isinstance(app.screen, MaxPriceScreen) and src.sets == []
        assert "not a decimal number" in str(app.screen.query_one("#price-error").render())
        app.screen.query_one(Input).value = ""
        await pilot.press("0", ".", "8", "enter")
        await until(pilot, lambda: app.sets_done == 1)
        assert src.sets == [{"max_price": "0.8"}]
        assert app.max_price == "0.8 msat/KB"
        assert "max price 0.8 msat/KB" in str(app.query_one("#buying", Static).render())
        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, MaxPriceScreen))
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, MaxPriceScreen))
        assert src.sets == [{"max_price": "0.8"}]
    run_app(client_app(src), body)


def test_q_quits():
    async def body(app, pilot):
        await pilot.press("q")
        await pilot.pause()
        assert app.return_code == 0 and not app.is_running
    run_app(client_app(), body)


def test_daemon_dying_mid_reply_then_gone_is_logged_once_each():
    class Dying(RecordedSource):
        def status(self):
            st = super().status()
            if self.index == 1:
                raise ControlError("io", "talking to control.sock failed: [Errno 104] Connection reset by peer")
            return st

    snaps = recorded("client")
    src = Dying([snaps[0], snaps[1], None, None])

    async def body(app, pilot):
        await poll(app, pilot, 3)
        log = log_text(app)
        assert log.count("daemon error: talking to control.sock failed") == 1
        assert log.count("daemon not running") == 1
        assert "daemon not running" in screen_text(app)
    run_app(client_app(src), body)


def test_stopped_daemon_shows_message_and_keeps_trying():
    snaps = recorded("client")
    src = RecordedSource([snaps[0], None, None, snaps[1]])

    async def body(app, pilot):
        await poll(app, pilot)
        banner = app.query_one("#banner", Static)
        assert banner.has_class("shown")
        screen = screen_text(app)
        assert "daemon not running" in screen and "tunnelgate up -c client.toml" in screen
        assert table_rows(app, "#contracts")     # the last data stays on screen
        await poll(app, pilot)
        assert log_text(app).count("daemon not running") == 1
        await poll(app, pilot)
        assert not banner.has_class("shown") and "daemon is back" in log_text(app)
    run_app(client_app(src), body)


def test_slow_daemon_never_blocks_the_ui():
    class Slow(RecordedSource):
        def status(self):
            time.sleep(3)
            return super().status()

    app = TunnelgateApp(Slow(recorded("client")), role="client", policy=Policy(), interval=0.05)

    async def main():
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.3)
            assert app._polling and app.polls == 0   # one poll in flight, no pile-up
            start = time.monotonic()
            await pilot.press("m")
            await until(pilot, lambda: isinstance(app.screen, MaxPriceScreen), timeout=1)
            await pilot.press("escape")
            await pilot.press("q")
            await pilot.pause()
            assert time.monotonic() - start < 1.5
    start = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - start < 2.5


# --- the gateway view -------------------------------------------------------------------

def test_gateway_shows_peers_contracts_revenue():
    src = RecordedSource(recorded("gateway"))

    async def body(app, pilot):
        await poll(app, pilot, 5)
        assert table_rows(app, "#peers") == [["100.64.0.2", "198.18.1.2:50720", "1", "504.7 kB", "1 sat",
                                              "yes", "pvg5RVZfxtqM"]]
        assert [r[:3] for r in table_rows(app, "#contracts")] == [["pvg5RVZf", "198.18.2.2/32", "PAID"]]
        screen = screen_text(app)
        assert "listening 198.18.1.1:51900" in screen and "1 peer" in screen
        # the backlog of events on start does not count as revenue; the payment while watching does
        assert "revenue 1 sat in the last 5 s" in screen
        await pilot.press("p")
        await pilot.press("m")
        await pilot.pause()
        assert src.sets == [] and not isinstance(app.screen, MaxPriceScreen)
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running
    run_app(gateway_app(src), body)


def test_gateway_rows_say_state_price_spend_record_and_what_each_carries():
    gws = json.loads((DATA / "gateways.json").read_text())
    rows = [[str(getattr(c, "plain", c)) for c in w.gateway_row(g)] for g in gws]
    assert rows[0][:7] == ["gw1", "up", "4.5 ms", "0%", "0.5 msat", "5 sat", "1/1 paid, 1 served"]
    assert rows[0][7] == "0.0.0.0/0 198.18.21.2/32 ::/0" and rows[1][7] == w.DASH
    assert rows[2][1] == "down" and rows[2][3] == "78%"
    bad = {**gws[1], "record": {**gws[1]["record"], "paid": 2, "unserved": 1}, "verdict": "took 1 payment(s)"}
    cell = w.gateway_row(bad)[6]
    assert cell.plain == "2/0 paid, 0 served, 1 unserved" and cell.style == "bold red"
    assert w.gateway_row({"public_key": "abcdefghijk", "state": "unverified"})[0] == "abcdefgh"


def test_client_shows_its_gateways_panel_only_when_the_daemon_reports_gateways():
    async def body(app, pilot):
        await poll(app, pilot)
        assert app.query_one("#gateways").has_class("shown")
        assert [r[0] for r in table_rows(app, "#gateways")] == ["gw1", "gw2", "gw3"]
    run_app(client_app(with_gateways()), body)

    async def older(app, pilot):     # a daemon without `gateways`: no panel, no error
        await poll(app, pilot)
        assert not app.query_one("#gateways").has_class("shown") and app.running
    run_app(client_app(), older)


# --- layout snapshots ---------------------------------------------------------------------

def with_gateways() -> RecordedSource:
    gws = json.loads((DATA / "gateways.json").read_text())
    return RecordedSource([{**s, "gateways": gws} for s in recorded("client")])


@pytest.mark.parametrize("role,size", [("client", (120, 36)), ("gateway", (120, 36)), ("client", (80, 24)),
                                       ("client_gateways", (120, 36))])
def test_layout_snapshot(role, size):
    name = f"{role}_{size[0]}x{size[1]}.txt"
    got: list[str] = []

    async def body(app, pilot):
        await poll(app, pilot, 5)
        got.append(screen_text(app))

    app = {"client": client_app, "gateway": gateway_app,
           "client_gateways": lambda: client_app(with_gateways())}[role]()
    run_app(app, body, size=size)
    text = "\n".join(line.rstrip() for line in got[0].splitlines()) + "\n"
    path = SNAPSHOTS / name
    if os.environ.get("TUI_SNAPSHOT_UPDATE") or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"layout changed; if intended: TUI_SNAPSHOT_UPDATE=1 pytest {__file__}"


# --- the CLI entry ------------------------------------------------------------------------

def test_run_with_a_bad_config_exits_2(tmp_path, capsys):
    bad = tmp_path / "x.toml"
    bad.write_text("[node]\n")
    assert run(str(bad)) == 2
    assert "tunnelgate:" in capsys.readouterr().err


def test_run_builds_the_view_for_the_configs_role(tmp_path, monkeypatch):
    from tunnelgate import keys
    conf = tmp_path / "client.toml"
    conf.write_text(f"""
[node]
private_key_file = "cl.key"
state_dir = "cl"
[gateway]
endpoint = "198.18.1.1:51900"
public_key = "{keys.b64(keys.public_of(keys.generate()))}"
[network]
tun = "tg0"
routes = ["0.0.0.0/0"]
[policy]
max_spend_per_hour = 100000
""")
    cfg = config_mod.load(conf)
    seen = {}

    def fake_run(self, *a, **kw):
        seen.update(role=self.role, path=str(self.source.path), policy=self.policy)
        self._return_code = 0

    monkeypatch.setattr(TunnelgateApp, "run", fake_run)
    assert run(str(conf)) == 0
    assert seen["role"] == "client" and seen["path"].endswith("control.sock") and seen["policy"] == cfg.policy
