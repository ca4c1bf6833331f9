"""The `tunnelgate` command. Thin: parse, load config, call into the rest.

Exit codes: 0 ok · 1 operation failed (message says why) · 2 usage or config
error · 3 daemon not running (status/down).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from . import config as config_mod
from . import keys

EXIT_FAILED, EXIT_CONFIG, EXIT_NOT_RUNNING = 1, 2, 3


def fail(message: str, code: int = EXIT_FAILED):
    click.echo(f"tunnelgate: {message}", err=True)
    sys.exit(code)


def load_config(path: str, role: str | None = None):
    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as e:
        fail(str(e), EXIT_CONFIG)
    if role and cfg.role != role:
        other = "serve" if cfg.role == "gateway" else "up"
        fail(f"{cfg.path} is a {cfg.role} config; use `tunnelgate {other} -c {path}`", EXIT_CONFIG)
    return cfg


config_option = click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
                             help="TOML config file (see conf/).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logs on stderr (they also go to state_dir).")
@click.version_option(package_name="tunnelgate")
@click.pass_context
def main(ctx, verbose):
    """Pay-per-use VPN gateway for mesh and community networks."""
    ctx.obj = {"verbose": verbose}


@main.command()
@click.option("--out", type=click.Path(dir_okay=False),
              help="Write the private key here (mode 0600) and print its public key.")
def keygen(out):
    """Create a private key. With --out: write it to that file and print its PUBLIC key.
    Without: print the PRIVATE key itself (as `wg genkey`), for `... > FILE`;
    `tunnelgate pubkey FILE` then prints its public key."""
    private = keys.generate()
    if out:
        try:
            keys.write_private(Path(out), private)
        except keys.KeyError_ as e:
            fail(str(e))
        click.echo(keys.b64(keys.public_of(private)))
    else:
        if sys.stdout.isatty():
            # on a terminal the secret is easy to mistake for the key to hand out
            click.echo("tunnelgate: this is a PRIVATE key: keep it secret; `tunnelgate keygen --out FILE` "
                       "writes it to a file and prints the public key to give out", err=True)
        click.echo(keys.b64(private))


@main.command()
@click.argument("keyfile", type=click.Path(dir_okay=False))
def pubkey(keyfile):
    """Print the public key of a private key file."""
    try:
        click.echo(keys.b64(keys.public_of(keys.read_private(Path(keyfile)))))
    except keys.KeyError_ as e:
        fail(str(e))


def _run_daemon(ctx, config_path: str, role: str, foreground: bool, wait: float):
    cfg = load_config(config_path, role)
    if cfg.role == "gateway":
        try:
            config_mod.check_interfaces(cfg)
        except config_mod.ConfigError as e:
            fail(str(e), EXIT_CONFIG)
    if os.geteuid() != 0:
        fail("needs root (it creates a TUN device and changes routes); run it with sudo", EXIT_FAILED)
    from .paths import running_pid, state_paths
    paths = state_paths(cfg.node.state_dir)
    pid = running_pid(paths["pid"])
    if pid:
        fail(f"already running (pid {pid}) for {cfg.path}; stop it with `tunnelgate down -c {config_path}`")
    try:
        private = keys.read_private(cfg.node.private_key_file)
    except keys.KeyError_ as e:
        fail(str(e), EXIT_CONFIG)
    if foreground:
        return _foreground(ctx, cfg, private)
    return _background(ctx, cfg, role, paths, wait)


def _foreground(ctx, cfg, private):
    from .daemon.base import DaemonError, setup_logging
    cfg.node.state_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(cfg.node.state_dir / "tunnelgate.log", ctx.obj["verbose"])
    if cfg.role == "gateway" and cfg.upstream is not None:
        from .daemon.relay import RelayDaemon as D          # a gateway whose uplink is a client
    elif cfg.role == "gateway":
        from .daemon.gateway import GatewayDaemon as D
    else:
        from .daemon.client import ClientDaemon as D
    daemon = D(cfg, private, ctx.obj["verbose"])
    try:
        daemon.prepare_state_dir()
        sys.exit(daemon.run())
    except Exception as e:
        from .daemon.store import StoreError
        from .net.setup import NetError
        from .tun import TunError
        # our own errors carry their advice; anything else is a bug worth its traceback in the log
        if isinstance(e, (DaemonError, StoreError, NetError, TunError)):
            fail(str(e))
        import logging
        logging.getLogger("tunnelgate").exception("daemon failed")
        fail(f"internal error {type(e).__name__}: {e} (see {cfg.node.state_dir / 'tunnelgate.log'})")


def _background(ctx, cfg, role, paths, wait):
    from .daemon.control import ControlError, request
    cmd = [sys.executable, "-m", "tunnelgate.cli"] + (["-v"] if ctx.obj["verbose"] else []) + \
          [("serve" if role == "gateway" else "up"), "-c", str(cfg.path), "--foreground"]
    cfg.node.state_dir.mkdir(parents=True, exist_ok=True)
    errfile = cfg.node.state_dir / "daemon.stderr"
    with open(errfile, "wb") as err:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                 start_new_session=True, close_fds=True)
    deadline = time.monotonic() + wait
    what = "tunnel to the gateway" if role == "client" else "gateway"
    while time.monotonic() < deadline:
        if child.poll() is not None:
            lines = [ln for ln in errfile.read_text(errors="replace").splitlines() if ln.strip()]
            reason = next((ln for ln in reversed(lines) if ln.startswith("tunnelgate:")), None)
            fail(reason.removeprefix("tunnelgate: ") if reason else
                 "the daemon exited during start-up: " + (lines[-1] if lines else "no output") +
                 f" (log: {paths['log']})")
        try:
            st = request(paths["control"], "status", timeout=1)
            if st.get("ready"):
                if role == "client":
                    click.echo(f"tunnelgate: up (pid {child.pid}), address {st.get('address')} "
                               f"via {st.get('gateway')}")
                else:
                    click.echo(f"tunnelgate: serving (pid {child.pid}) on {st.get('listen')}, "
                               f"tunnel {st.get('address')}, upstream {st.get('upstream_interface')}")
                return
        except ControlError:
            pass
        time.sleep(0.1)
    try:
        os.kill(child.pid, signal.SIGTERM)
        child.wait(5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        child.kill()
    if role == "client":
        where = f"the gateway at {cfg.endpoint[0]}:{cfg.endpoint[1]}" if cfg.endpoint else "any gateway found"
        fail(f"no handshake with {where} within {wait:g} s: "
             "check that it runs, that [gateway] public_key is its `tunnelgate pubkey`, and that UDP "
             f"reaches it (log: {paths['log']})")
    fail(f"the {what} did not become ready within {wait:g} s (log: {paths['log']})")


@main.command()
@config_option
@click.option("--foreground", is_flag=True, help="Stay in the foreground (for service managers).")
@click.option("--wait", default=15.0, show_default=True, help="Seconds to wait until ready.")
@click.pass_context
def serve(ctx, config_path, foreground, wait):
    """Run the gateway daemon."""
    _run_daemon(ctx, config_path, "gateway", foreground, wait)


@main.command()
@config_option
@click.option("--foreground", is_flag=True, help="Stay in the foreground (for service managers).")
@click.option("--wait", default=15.0, show_default=True,
              help="Seconds to wait for the handshake with the gateway.")
@click.pass_context
def up(ctx, config_path, foreground, wait):
    """Run the client daemon: bring the tunnel up."""
    _run_daemon(ctx, config_path, "client", foreground, wait)


@main.command()
@config_option
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for a clean stop.")
def down(config_path, timeout):
    """Stop the daemon this config runs and restore routes and rules."""
    cfg = load_config(config_path)
    from .paths import running_pid, state_paths
    from .daemon.control import ControlError, request
    from .net import setup as netsetup
    paths = state_paths(cfg.node.state_dir)
    pid = running_pid(paths["pid"])
    if pid is None:
        if paths["net"].exists():
            netsetup.teardown(paths["net"])
            click.echo("tunnelgate: not running; removed routes and rules a dead instance left")
            return
        fail(f"not running for {cfg.path}", EXIT_NOT_RUNNING)
    try:
        request(paths["control"], "stop", timeout=3)
    except ControlError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running_pid(paths["pid"]) == pid:
        time.sleep(0.05)
    if running_pid(paths["pid"]) == pid:
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        netsetup.teardown(paths["net"])
        click.echo(f"tunnelgate: pid {pid} did not stop within {timeout:g} s; killed it and cleaned up")
        return
    click.echo(f"tunnelgate: stopped (pid {pid})")


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path, as_json):
    """Show the daemon's state."""
    cfg = load_config(config_path)
    st = _ask(cfg, config_path, "status")
    if as_json:
        click.echo(json.dumps(st, indent=2, sort_keys=True))
        return
    from .status_text import render
    click.echo(render(st))


@main.command()
@config_option
@click.option("--all", "show_all", is_flag=True, help="Include ended contracts this run remembers.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def contracts(config_path, show_all, as_json):
    """List the daemon's contracts."""
    cfg = load_config(config_path)
    from .status_text import contracts_table
    items = _ask(cfg, config_path, "contracts", all=show_all)
    if as_json:
        click.echo(json.dumps(items, indent=2, sort_keys=True))
    else:
        click.echo("\n".join(contracts_table(items, with_peer=cfg.role == "gateway")))


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def peers(config_path, as_json):
    """Gateway: its clients (address, endpoint, grace, paid contracts, drops). Client: its gateway."""
    cfg = load_config(config_path)
    items = _ask(cfg, config_path, "peers")
    if as_json:
        click.echo(json.dumps(items, indent=2, sort_keys=True))
        return
    for p in items:
        extra = "" if cfg.role == "client" else (
            f"  grace {'yes' if p.get('grace', True) else 'no'}, {p.get('paid_contracts', 0)} paid contracts, "
            f"dropped {p.get('drops_held', 0) + p.get('drops_no_deal', 0) + p.get('drops_inbound_no_contract', 0)}")
        click.echo(f"{p.get('address') or '-':<18} {p.get('endpoint') or '-':<22} {p['public_key']}{extra}")


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def history(config_path, as_json):
    """Past contracts and payments, with totals (from the database; the daemon may be stopped)."""
    cfg = load_config(config_path)
    from .paths import state_paths
    from . import history as hist
    try:
        items = hist.contracts(state_paths(cfg.node.state_dir)["db"])
        if getattr(cfg, "upstream", None) is not None:      # a relay: what it bought, and the margin
            up = hist.contracts(state_paths(cfg.upstream.node.state_dir)["db"])
            money = hist.resale(state_paths(cfg.node.state_dir)["db"])
    except hist.HistoryError as e:
        fail(str(e))
    if getattr(cfg, "upstream", None) is not None:
        out = {"contracts": items, "upstream": up, "resale": money}
        click.echo(json.dumps(out, indent=2, sort_keys=True) if as_json else hist.render_relay(items, up, money))
        return
    click.echo(json.dumps(items, indent=2, sort_keys=True) if as_json else hist.render(items))


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def gateways(config_path, as_json):
    """Client: every known gateway: state, RTT, loss, price, destinations, spend, record."""
    cfg = load_config(config_path)
    if cfg.role != "client":
        fail("`gateways` is a client command; give the client's config", EXIT_CONFIG)
    gws = _ask(cfg, config_path, "gateways")
    if as_json:
        click.echo(json.dumps(gws, indent=2, sort_keys=True))
        return
    from .status_text import gateways_text
    click.echo(gateways_text(gws))


@main.command()
@config_option
@click.argument("destination")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def quote(config_path, destination, as_json):
    """Ask the gateway's terms for DESTINATION (an address or prefix) without buying."""
    cfg = load_config(config_path, "client")
    from .money import format_msat
    q = _ask(cfg, config_path, "quote", destination=destination, timeout=10)
    if as_json:
        click.echo(json.dumps(q, indent=2, sort_keys=True))
        return
    click.echo(f"{q['destination']}: {q['price_text']}, {q['limit_kb']} KB for up to {q['time_s']} s "
               f"= {format_msat(q['cost_msat'])} per contract; pay with {', '.join(q['methods'])}; "
               f"grace {q['grace_s']} s / {q['grace_kb']} KB")
    if q["reason"]:
        click.echo(f"note: {q['reason']}")
    if len(q.get("chain", ())) > 1:         # resold: who is paid what, the gateway with the uplink first
        from .money import format_price as fp
        click.echo("chain: " + " -> ".join(f"{h['public_key'][:12]}… {fp(h['price_per_kb'])}" for h in q["chain"]))
    if q.get("chain_problem"):
        click.echo(f"the chain does not add up: {q['chain_problem']}")
    click.echo(f"your max price {q['max_price']}: "
               + ("would accept" if q["acceptable"] else "would counter-offer"))


@main.command()
@config_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing events as they happen (Ctrl-C stops).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events(config_path, follow, as_json):
    """Contract, payment and setting events: proposed, accepted, paid, renewed, revoked, ..."""
    cfg = load_config(config_path)
    from .paths import state_paths
    from .daemon.control import ControlError, stream
    from .status_text import event_line
    path = state_paths(cfg.node.state_dir)["control"]
    items = stream(path, "events", follow=True) if follow else iter(_ask(cfg, config_path, "events"))
    try:
        for ev in items:
            click.echo(json.dumps(ev, sort_keys=True) if as_json else event_line(ev))
            sys.stdout.flush()  # a pipe (| grep, a log collector) sees each event as it happens
    except ControlError as e:
        fail(str(e), EXIT_NOT_RUNNING if e.code == "not_running" else EXIT_FAILED)
    except KeyboardInterrupt:
        pass


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def advert(config_path, as_json):
    """Gateway: the signed advert it announces and serves now, decoded."""
    cfg = load_config(config_path, "gateway")
    a = _ask(cfg, config_path, "advert")
    if as_json:
        click.echo(json.dumps(a, indent=2, sort_keys=True))
        return
    from .status_text import advert_text
    click.echo(advert_text(a))


@main.command("set")
@config_option
@click.argument("settings", nargs=-1, required=True)
def set_(config_path, settings):
    """Change live settings: KEY=VALUE ...

    Client: pause_buying=true|false, max_price=0.8 (msat/KB), max_spend_per_hour|day|total=MSAT
    (none lifts the limit). Gateway: default_price=0.5, floor_price=0.2. Not written to the config.
    """
    cfg = load_config(config_path)
    args = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"expected KEY=VALUE, got {item!r}", EXIT_CONFIG)
        low = value.lower()
        args[key] = True if low == "true" else False if low == "false" else None if low in ("none", "null") \
            else int(value) if value.isdigit() and key.startswith("max_spend") else value
    result = _ask(cfg, config_path, "set", **args)
    click.echo("\n".join(f"{k} = {v}" for k, v in result.items()))


@main.command()
@config_option
def tui(config_path):
    """Live view of the daemon: contracts, spend/budgets, throughput, events."""
    from .tui import run, without_terminal
    problem = without_terminal(config_path)
    if problem:
        fail(problem, EXIT_CONFIG)
    sys.exit(run(config_path))


def _ask(cfg, config_path, cmd, timeout: float = 5.0, **args):
    from .paths import state_paths
    from .daemon.control import ControlError, request
    try:
        return request(state_paths(cfg.node.state_dir)["control"], cmd, timeout=timeout, **args)
    except ControlError as e:
        if e.code == "not_running":
            fail(f"not running for {cfg.path}; start it with "
                 f"`tunnelgate {'serve' if cfg.role == 'gateway' else 'up'} -c {config_path}`", EXIT_NOT_RUNNING)
        fail(str(e))


from .cli_config import config_group  # noqa: E402  (keeps `config` commands in their own module)

main.add_command(config_group)

if __name__ == "__main__":
    main()
