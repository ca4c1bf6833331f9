"""The `tunnelgate tui` live view (textual).  `run(cfg_path)` is the CLI's entry."""

from __future__ import annotations

import sys

from .source import RecordedSource, SocketSource, Source

__all__ = ["run", "main", "Source", "SocketSource", "RecordedSource"]


def run(cfg_path: str) -> int:
    """Loads the config, opens the view for its role on the daemon's control socket.

    Exit codes as the CLI's: 0 ok, 2 configuration error."""
    from .. import config as config_mod
    from ..paths import state_paths
    from .app import TunnelgateApp

    try:
        cfg = config_mod.load(cfg_path)
    except config_mod.ConfigError as e:
        print(f"tunnelgate: {e}", file=sys.stderr)
        return 2
    source = SocketSource(state_paths(cfg.node.state_dir)["control"])
    app = TunnelgateApp(source, role=cfg.role, policy=getattr(cfg, "policy", None), config_path=cfg_path)
    app.run()
    return app.return_code or 0


def without_terminal(cfg_path: str) -> str | None:
    """What to tell a user who runs the TUI without a terminal (None: there is one):
    textual would draw escape codes into a pipe or wait on a closed stdin."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        return None
    return ("the TUI needs a terminal (stdin and stdout); for scripts use "
            f"`tunnelgate status -c {cfg_path} --json` or `tunnelgate events -c {cfg_path} --follow`")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tunnelgate.tui",
                                     description="Live view of a tunnelgate daemon.")
    parser.add_argument("-c", "--config", required=True, help="the daemon's TOML config")
    args = parser.parse_args(argv)
    problem = without_terminal(args.config)
    if problem:
        print(f"tunnelgate: {problem}", file=sys.stderr)
        return 2
    return run(args.config)
