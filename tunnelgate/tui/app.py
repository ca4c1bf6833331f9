"""`tunnelgate tui -c FILE`: a live view of a client or gateway daemon.

The data comes from a `Source` (the control socket, or recorded snapshots in
tests).  Every `interval` s one poll runs in a daemon thread and hands its result
to the UI thread, so a slow or dead daemon never blocks the UI; at most one poll
is in flight.  Keys: q quit; on a client p pause/resume buying, m max price.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Label, RichLog, Sparkline, Static

from ..money import MoneyError, format_msat, format_price, parse_price
from . import widgets as w
from .source import ControlError, Source

EVENTS_SHOWN = 500


class MaxPriceScreen(ModalScreen[str | None]):
    """Asks for a new max price in msat/KB; returns the string, or None on escape."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    MaxPriceScreen { align: center middle; }
    MaxPriceScreen > Vertical { width: 56; height: auto; border: round $accent; background: $surface;
                                padding: 0 1; }
    MaxPriceScreen Label { width: 100%; }
    MaxPriceScreen #price-error { color: $error; height: auto; }
    """

    def __init__(self, current: str):
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Max price in msat/KB (now {self.current}); enter to send, esc to cancel")
            yield Input(placeholder="e.g. 0.8", id="price-input")
            yield Label("", id="price-error")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        try:
            parse_price(value)
        except MoneyError as e:
            self.query_one("#price-error", Label).update(str(e))
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class TunnelgateApp(App):
    CSS = """
    Screen { layout: vertical; }
    #title { height: 1; background: $primary-background; color: $text; padding: 0 1; text-style: bold; }
    #banner { height: auto; background: $error; color: $text; padding: 0 1; display: none; }
    #banner.shown { display: block; }
    DataTable { height: 1fr; min-height: 4; border: round $primary; }
    #peers { height: 1fr; }
    #gateways { height: auto; max-height: 9; min-height: 0; display: none; }
    #gateways.shown { display: block; }
    #middle { height: 8; }
    #budget { width: 1fr; height: 100%; border: round $primary; padding: 0 1; }
    #budget Static { text-wrap: nowrap; text-overflow: ellipsis; height: auto; }
    #middle.gateway { height: 5; }
    #graphs, #graphs2 { width: 1fr; height: 100%; border: round $primary; padding: 0 1; }
    #graphs Label, #graphs2 Label { width: 100%; text-wrap: nowrap; text-overflow: ellipsis; }
    #graphs Sparkline, #graphs2 Sparkline { height: 2; }
    #events { height: 1fr; min-height: 4; border: round $primary; }
    """

    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("p", "toggle_pause", "Pause/resume buying"),
        Binding("m", "max_price", "Max price"),
    ]

    def __init__(self, source: Source, role: str = "client", policy: Any = None,
                 config_path: str | None = None, interval: float | None = 1.0):
        super().__init__()
        if role not in ("client", "gateway"):
            raise ValueError(f"role must be client or gateway, not {role!r}")
        self.source = source
        self.role = role
        self.policy = policy              # cfg.policy (budgets, max_price) for a client
        self.config_path = config_path
        self.interval = interval
        self.status: dict | None = None
        self.gateways: list[dict] | None = None   # a client's `gateways`; None: not answered
        self.error: ControlError | None = None
        self.running: bool | None = None   # None until the first poll answered
        self.paused: bool | None = None    # None: the daemon does not say and we did not set it
        self.max_price: str | None = format_price(policy.max_price) if policy is not None else None
        self.polls = 0                     # polls applied (tests wait on it)
        self.sets_done = 0                 # set requests answered (tests wait on it)
        self._since = 0.0
        self._polling = False
        self._last_error_code: str | None = None
        self._first_events = True
        self._revenue = 0                  # gateway: msat of `paid` events seen while running
        self.rates = w.Rates(3)
        self._tui_loop: asyncio.AbstractEventLoop | None = None

    # --- layout --------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(f"tunnelgate {self.role} · connecting…", id="title")
        yield Static("", id="banner")
        if self.role == "client":
            yield DataTable(id="contracts", cursor_type="row", zebra_stripes=True)
            yield DataTable(id="gateways", cursor_type="row", zebra_stripes=True)
            with Horizontal(id="middle"):
                with Vertical(id="budget"):
                    yield Static("", id="spend")
                    yield Static("", id="buying")
                    yield Static("", id="alerts")
                with Vertical(id="graphs"):
                    yield Label("throughput", id="tput-label")
                    yield Sparkline([0.0], id="tput")
                    yield Label("spend", id="money-label")
                    yield Sparkline([0.0], id="money")
        else:
            yield DataTable(id="peers", cursor_type="row", zebra_stripes=True)
            yield DataTable(id="contracts", cursor_type="row", zebra_stripes=True)
            with Horizontal(id="middle", classes="gateway"):
                with Vertical(id="graphs"):
                    yield Label("revenue", id="money-label")
                    yield Sparkline([0.0], id="money")
                with Vertical(id="graphs2"):
                    yield Label("throughput", id="tput-label")
                    yield Sparkline([0.0], id="tput")
        yield RichLog(id="events", max_lines=EVENTS_SHOWN, wrap=False, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self._tui_loop = asyncio.get_running_loop()
        self.title = f"tunnelgate {self.role}"
        contracts = self.query_one("#contracts", DataTable)
        contracts.border_title = "contracts"
        cols = w.CONTRACT_COLUMNS if self.role == "client" else ("peer",) + w.CONTRACT_COLUMNS
        contracts.add_columns(*cols)
        if self.role == "gateway":
            peers = self.query_one("#peers", DataTable)
            peers.border_title = "peers"
            peers.add_columns(*w.PEER_COLUMNS)
        else:
            self.query_one("#budget").border_title = "spend / budget"
            gateways = self.query_one("#gateways", DataTable)
            gateways.border_title = "gateways"
            gateways.add_columns(*w.GATEWAY_COLUMNS)
        if self.role == "gateway":
            self.query_one("#graphs").border_title = "revenue · last 5 min"
            self.query_one("#graphs2").border_title = "throughput · last 5 min"
        else:
            self.query_one("#graphs").border_title = "last 5 min"
        self.query_one("#events").border_title = "events"
        self.poll()
        if self.interval:
            self.set_interval(self.interval, self.poll)

    # --- bindings ----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action in ("toggle_pause", "max_price") and self.role != "client":
            return False
        return True

    def action_toggle_pause(self) -> None:
        want = not bool(self.paused)
        self.send_set(pause_buying=want)

    def action_max_price(self) -> None:
        self.push_screen(MaxPriceScreen(self.max_price or "?"), self._max_price_chosen)

    def _max_price_chosen(self, value: str | None) -> None:
        if value:
            self.send_set(max_price=value)

    # --- talking to the daemon (never on the UI thread) --------------------------------------

    def _in_thread(self, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        loop = self._tui_loop

        def run() -> None:
            try:
                result: Any = ("ok", work())
            except ControlError as e:
                result = ("error", e)
            except Exception as e:  # a bug or garbage reply must not kill the UI
                result = ("error", ControlError("internal", f"{type(e).__name__}: {e}"))
            try:
                loop.call_soon_threadsafe(done, result)
            except RuntimeError:  # the app is gone
                pass

        # daemon threads: quitting never waits for a hung socket
        threading.Thread(target=run, name="tui-source", daemon=True).start()

    def poll(self) -> None:
        if self._polling:
            return
        self._polling = True
        since = self._since
        client = self.role == "client"
        self._in_thread(lambda: (self.source.status(), self.source.events(since),
                                 self._gateways() if client else None), self._polled)

    def _gateways(self) -> list[dict] | None:
        """The client's gateways (worker thread); None from a daemon without the request."""
        try:
            return self.source.gateways()
        except ControlError as e:
            if e.code in ("unknown_command", "bad_request"):
                return None
            raise

    def send_set(self, **kw: Any) -> None:
        what = ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={str(v).lower()}" for k, v in kw.items())
        self.note(f"set {what} …", "dim")
        self._in_thread(lambda: self.source.set(**kw), lambda r: self._set_done(kw, what, r))

    def _set_done(self, kw: dict, what: str, result: tuple) -> None:
        self.sets_done += 1
        kind, value = result
        if kind == "error":
            self.note(f"set {what} failed: {value}", "bold red")
            return
        if "pause_buying" in kw:
            self.paused = bool(kw["pause_buying"])
            self.note("buying paused: no new contracts" if self.paused else "buying resumed", "bold")
        if "max_price" in kw:
            self.max_price = format_price(parse_price(kw["max_price"]))
            self.note(f"max price now {self.max_price}", "bold")
        self._render_info()

    def note(self, message: str, style: str = "") -> None:
        self.query_one("#events", RichLog).write(w.note_line(message, style))

    # --- applying a poll ------------------------------------------------------------------------

    def _polled(self, result: tuple) -> None:
        self._polling = False
        self.polls += 1
        kind, value = result
        if kind == "error":
            self._down(value)
            return
        st, events, self.gateways = value
        was = self.running
        self.running, self.error, self.status = True, None, st
        self._last_error_code = None
        if was is False:
            self.note(f"daemon is back (pid {st.get('pid')})", "bold green")
        self._events(events)
        self._sync_settings(st)
        stats = st.get("stats") or {}
        money = ((st.get("market") or {}).get("spend") or {}).get("total", 0) if self.role == "client" \
            else self._revenue
        t = st.get("uptime_s")
        self.rates.feed(t if isinstance(t, (int, float)) else time.monotonic(),
                        (stats.get("tx_bytes", 0), stats.get("rx_bytes", 0), money or 0))
        self._render_all()

    def _down(self, err: ControlError) -> None:
        was = self.running
        self.running, self.error = False, err
        banner = self.query_one("#banner", Static)
        if err.code == "not_running":
            start = "serve" if self.role == "gateway" else "up"
            cfg = f" -c {self.config_path}" if self.config_path else ""
            msg = f"daemon not running — start it with `tunnelgate {start}{cfg}`; retrying every {self.interval or 1:g} s"
        else:
            msg = f"daemon not answering ({err.code}): {err}; retrying"
        banner.update(msg)
        banner.add_class("shown")
        if was is not False or err.code != self._last_error_code:
            self.note("daemon not running" if err.code == "not_running" else f"daemon error: {err}", "bold red")
        self._last_error_code = err.code
        self._render_info()

    def _events(self, events: list) -> None:
        log = self.query_one("#events", RichLog)
        fresh = self._first_events
        self._first_events = False
        for ev in events or []:
            ts = ev.get("ts") or 0
            if ts <= self._since:
                continue
            self._since = ts
            if ev.get("kind") == "paid" and not fresh:
                self._revenue += int(ev.get("amount_msat") or 0)
            log.write(w.event_line(ev, with_peer=self.role == "gateway"))

    def _sync_settings(self, st: dict) -> None:
        """Paused/max price as the daemon reports them, when it does."""
        market = st.get("market") or {}
        for d in (st, market, st.get("policy") or {}):
            for key in ("pause_buying", "paused", "buying_paused"):
                if isinstance(d.get(key), bool):
                    self.paused = d[key]
            mp = d.get("max_price")
            if isinstance(mp, int) and not isinstance(mp, bool):
                self.max_price = format_price(mp)
            elif isinstance(mp, str) and mp:
                try:
                    self.max_price = format_price(parse_price(mp))
                except MoneyError:
                    pass

    # --- rendering --------------------------------------------------------------------------

    def _render_all(self) -> None:
        self.query_one("#banner", Static).remove_class("shown")
        st = self.status or {}
        market = st.get("market") or {}
        self._fill(self.query_one("#contracts", DataTable),
                   [w.contract_row(c, with_peer=self.role == "gateway") for c in market.get("contracts") or []],
                   [c.get("contract_id") for c in market.get("contracts") or []])
        if self.role == "gateway":
            rows = w.peer_rows(st)
            self._fill(self.query_one("#peers", DataTable), rows, None)
        else:
            self._render_budget(st)
            self._render_gateways()
        self._render_graphs()
        self._render_info()

    @staticmethod
    def _fill(table: DataTable, rows: list[list], keys: list | None) -> None:
        cursor = table.cursor_row
        table.clear()
        seen = set()
        for i, row in enumerate(rows):
            key = keys[i] if keys and keys[i] and keys[i] not in seen else None
            seen.add(key)
            table.add_row(*row, key=key)
        if rows:
            table.move_cursor(row=min(cursor, len(rows) - 1), animate=False)

    def _render_gateways(self) -> None:
        """The client's gateways panel: shown once the daemon reports any (a client of the
        market; an older daemon without `gateways` shows none)."""
        table = self.query_one("#gateways", DataTable)
        gws = self.gateways or []
        table.set_class(bool(gws), "shown")
        self._fill(table, [w.gateway_row(g) for g in gws], [g.get("public_key") for g in gws])

    def _render_budget(self, st: dict) -> None:
        market = st.get("market") or {}
        text = w.budget_text(market.get("spend") or {}, self.policy, st.get("wallet"))
        alerts = Text()
        if market.get("budget_reason"):
            alerts.append(f"budget: {market['budget_reason']}\n", style="bold red")
        for dest, d in sorted((market.get("destinations") or {}).items()):
            if d.get("no_deal_reason"):
                alerts.append(f"no deal {dest}: {d['no_deal_reason']} (retry in {d.get('retry_in_s', 0)} s)\n",
                              style="yellow")
        alerts.rstrip()
        self.query_one("#alerts", Static).update(alerts)
        self.query_one("#spend", Static).update(text)

    def _render_graphs(self) -> None:
        r = self.rates
        tx, rx = r.latest(0), r.latest(1)
        peak = w.rate(max([a + b for a, b, _ in r.history] or [0]))
        if self.role == "client":
            tput = f"throughput ↓ {w.rate(rx)} ↑ {w.rate(tx)}  peak {peak}"
        else:
            tput = f"throughput → peers {w.rate(tx)} ← peers {w.rate(rx)}  peak {peak}"
        self.query_one("#tput-label", Label).update(tput)
        self.query_one("#tput", Sparkline).data = w.sparkline_data(a + b for a, b, _ in r.history)
        total, covered = r.recent(2, 60)
        word = "spend" if self.role == "client" else "revenue"
        per_min = w.msat_rate(total / covered) if covered else w.msat_rate(0)
        self.query_one("#money-label", Label).update(
            f"{word} {format_msat(int(total))} in the last {w.duration(covered)} ({per_min})")
        self.query_one("#money", Sparkline).data = w.sparkline_data(r.series(2))

    def _render_info(self) -> None:
        st = self.status or {}
        title = Text(f"tunnelgate {self.role}", style="bold")
        if self.running is None:
            title.append(" · connecting…")
        elif not self.running:
            title.append(" · daemon not running", style="bold red")
        elif self.role == "client":
            title.append(" · ")
            title.append("connected" if st.get("connected") else "connecting",
                         style="green" if st.get("connected") else "yellow")
            title.append(f" {st.get('address') or '(no address yet)'} via {st.get('gateway') or '?'}")
        else:
            npeers = len(st.get("peers") or [])
            title.append(f" · listening {st.get('listen') or '?'} · tunnel {st.get('address') or '?'}"
                         f" → {st.get('upstream_interface') or '?'} · {npeers} peer{'' if npeers == 1 else 's'}")
        if self.running:
            title.append(f" · pid {st.get('pid')} up {w.duration(st.get('uptime_s'))}")
            pay = st.get("payment") or {}
            if pay:
                title.append(f" · {pay.get('backend')}")
                if not pay.get("real_money", True):
                    title.append(" (no real money)", style="yellow")
        self.query_one("#title", Static).update(title)
        if self.role == "client":
            buying = Text("buying ", style="bold")
            if self.paused:
                buying.append("PAUSED (p resumes)", style="bold red")
            else:
                buying.append("on" if self.paused is None else "ON", style="bold green")
                buying.append(" (p pauses)")
            buying.append(" · max price ", style="bold")
            buying.append(f"{self.max_price or '?'} (m)")
            self.query_one("#buying", Static).update(buying)

