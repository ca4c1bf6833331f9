"""The layers DESIGN.md describes, enforced: every import statement of every module in
tunnelgate/ (those inside functions too, and import_module/__import__ of a literal name)
is checked against the rules below, each with the reason it exists.

A failure names the file, the line, the import and the rule it breaks.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import tunnelgate

PACKAGE = Path(tunnelgate.__file__).parent

# The sans-IO core: protocol state machines, metering, money, packets, the session.
CORE = ("tunnelgate.protocol", "tunnelgate.meter", "tunnelgate.money", "tunnelgate.packet",
        "tunnelgate.replay", "tunnelgate.wire", "tunnelgate.session", "tunnelgate.cookie",
        "tunnelgate.ratelimit", "tunnelgate.router")

CORE_WHY = ("the sans-IO core takes the clock (`now`), random bytes and locks as parameters and "
            "returns what to send, so one code runs alike under unit tests, fuzzers and both "
            "daemons, and a test drives time by hand")
CORE_FORBIDDEN = {
    "socket": "it touches no socket", "select": "it waits on no file descriptor",
    "selectors": "it waits on no file descriptor", "asyncio": "it runs no event loop",
    "threading": "it makes no threads or locks (a daemon passes its lock in)",
    "_thread": "it makes no threads or locks (a daemon passes its lock in)",
    "time": "it reads no clock (`now` is a parameter)",
    "random": "it draws no randomness (random bytes are a parameter)",
    "secrets": "it draws no randomness (random bytes are a parameter)",
    "os": "it reads no files, environment or os.urandom",
    "subprocess": "it starts no processes", "sqlite3": "it stores nothing (the daemon persists)",
    "tunnelgate.config": "configuration is read by the daemon, which hands the core plain values",
    "tunnelgate.payments": "payment backends do I/O; the core only states amounts",
    "tunnelgate.payment_backends": "payment backends belong to the daemon",
    "tunnelgate.daemon": "the daemon drives the core, never the other way round",
    "tunnelgate.net": "routes and firewall rules are the daemon's I/O",
    "tunnelgate.tun": "the TUN device is the daemon's I/O",
    # offload.chunks (the chunk record's format) and the header helpers are pure; the sockets are not
    "tunnelgate.offload.udp": "UDP GSO/GRO sockets are the data path's I/O",
    "tunnelgate.cli": "the command line sits on top of everything",
    "tunnelgate.tui": "the TUI sits on top of everything",
}

CONTROL = "tunnelgate.daemon.control"
VIEWS = ("tunnelgate.tui", "tunnelgate.status_text", "tunnelgate.history")
VIEWS_WHY = ("the TUI and the status/history views reach a daemon only through its control "
             "socket (tunnelgate.daemon.control; file locations from tunnelgate.paths), so they "
             "never load the data path or depend on a daemon's internals")

CLI = ("tunnelgate.cli", "tunnelgate.cli_config")
# The functions that run a daemon in this process (serve/up --foreground): the only place the
# CLI may load daemon modules other than the control client.
CLI_RUNS_A_DAEMON = {"_foreground"}
CLI_WHY = ("the CLI imports the daemon only to run one (serve/up, in "
           f"{', '.join(sorted(CLI_RUNS_A_DAEMON))}); to talk to a running daemon it uses the "
           "control socket (tunnelgate.daemon.control), and tunnelgate.paths to find it")

OUTSIDE = {
    "tglab": "the lab package is for scripts/ and tests/, not the installed package",
    "tests": "the package never depends on its tests",
    "scripts": "the package never depends on its scripts",
}

CONFIG_FORBIDDEN = {
    "tunnelgate.payments": "reading a config loads no payment code (backend names come from "
                           "tunnelgate.payment_backends, which imports nothing)",
}


@dataclass(frozen=True)
class Import:
    module: str      # the importing module, e.g. "tunnelgate.session"
    path: Path
    line: int
    name: str        # what it imports, e.g. "threading" or "tunnelgate.daemon.base"
    function: str    # the outermost function the statement sits in, "" at module level

    def __str__(self) -> str:
        where = f" (in {self.function})" if self.function else ""
        return f"{self.path}:{self.line}: {self.module} imports {self.name}{where}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> list[Import]:
    """Every import in the file: `from X import a` counts as X and X.a (a may be a module)."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []

    def add(node, name, function):
        found.append(Import(module, path, node.lineno, name, function))

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = function
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and not function:
                inner = child.name
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(child, alias.name, inner)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[:len(package.split(".")) - child.level + 1]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module
                add(child, source, inner)
                for alias in child.names:
                    if alias.name != "*":
                        add(child, f"{source}.{alias.name}", inner)
            elif isinstance(child, ast.Call):
                callee = child.func.attr if isinstance(child.func, ast.Attribute) else \
                    child.func.id if isinstance(child.func, ast.Name) else ""
                if callee in ("import_module", "__import__") and child.args \
                        and isinstance(child.args[0], ast.Constant) and isinstance(child.args[0].value, str):
                    add(child, child.args[0].value, inner)
            visit(child, inner)

    visit(tree, "")
    return found


def all_imports(root: Path) -> list[Import]:
    return [i for path in sorted(root.rglob("*.py")) for i in imports_of(path, root)]


def within(name: str, prefixes) -> str | None:
    """The prefix `name` is, or is inside of (a package or a module's attribute), if any."""
    for p in prefixes:
        if name == p or name.startswith(p + "."):
            return p
    return None


def violations(imports: list[Import]) -> list[str]:
    out: dict[tuple, str] = {}      # one line per statement and rule (`from X import a` is X and X.a)

    def report(i: Import, rule: str, why: str) -> None:
        out.setdefault((i.path, i.line, rule), f"{i}: {why}")

    for i in imports:
        if within(i.module, CORE) and (hit := within(i.name, CORE_FORBIDDEN)):
            report(i, hit, f"{CORE_FORBIDDEN[hit]}; {CORE_WHY}")
        daemon_internal = within(i.name, ("tunnelgate.daemon",)) and not within(i.name, (CONTROL,)) \
            and i.name != "tunnelgate.daemon"     # `from tunnelgate.daemon import control`
        if within(i.module, VIEWS) and daemon_internal:
            report(i, "views", VIEWS_WHY)
        if within(i.module, CLI) and daemon_internal and i.function not in CLI_RUNS_A_DAEMON:
            report(i, "cli", CLI_WHY)
        if hit := within(i.name, OUTSIDE):
            report(i, hit, OUTSIDE[hit])
        if i.module == "tunnelgate.config" and (hit := within(i.name, CONFIG_FORBIDDEN)):
            report(i, hit, CONFIG_FORBIDDEN[hit])
    return list(out.values())


def test_the_package_keeps_its_layers():
    found = violations(all_imports(PACKAGE))
    assert not found, "layering broken:\n" + "\n".join(found)


def test_the_rules_name_modules_that_exist():
    """A renamed module would silently leave its rule checking nothing."""
    names = {module_name(p, PACKAGE) for p in PACKAGE.rglob("*.py")}
    for m in (*CORE, *VIEWS, *CLI, CONTROL, "tunnelgate.config", "tunnelgate.paths"):
        assert m in names, f"{m} is named by a layering rule but no longer exists"


def test_the_walk_sees_every_kind_of_import():
    """The checks read real data: module-level, in-function, relative and from-imports."""
    got = {(i.module, i.name, i.function) for i in all_imports(PACKAGE)}
    assert ("tunnelgate.daemon.base", "threading", "") in got
    assert ("tunnelgate.cli", "tunnelgate.daemon.gateway.GatewayDaemon", "_foreground") in got
    assert ("tunnelgate.cli", "tunnelgate.daemon.control", "_ask") in got
    assert ("tunnelgate.session", "tunnelgate.replay", "") in got


VIOLATIONS = [
    ("session.py", "import threading\n", "tunnelgate.session imports threading"),
    ("protocol/seller.py", "def f():\n    import time\n", "tunnelgate.protocol.seller imports time (in f)"),
    ("meter.py", "from tunnelgate import config\n", "imports tunnelgate.config"),
    ("money.py", "from .daemon import base\n", "tunnelgate.money imports tunnelgate.daemon"),
    ("tui/app.py", "from ..daemon.base import Daemon\n", "tunnelgate.tui.app imports tunnelgate.daemon.base"),
    ("status_text.py", "import tunnelgate.daemon.datapath\n", "imports tunnelgate.daemon.datapath"),
    ("cli.py", "def status():\n    from .daemon.base import Daemon\n", "(in status)"),
    ("cli.py", "from .daemon import gateway\n", "tunnelgate.cli imports tunnelgate.daemon.gateway"),
    ("keys.py", "import importlib\nimportlib.import_module('tglab.bench')\n", "imports tglab.bench"),
    ("daemon/gateway.py", "from tests.integration import tgenv\n", "imports tests.integration"),
    ("tui/widgets.py", "import scripts\n", "tunnelgate.tui.widgets imports scripts"),
    ("config.py", "def f():\n    from tunnelgate.payments import BACKENDS\n", "imports tunnelgate.payments"),
    ("session.py", "from .offload.udp import UdpSender\n", "tunnelgate.session imports tunnelgate.offload.udp"),
]


@pytest.mark.parametrize("where,source,expected", VIOLATIONS, ids=[v[0] + ":" + v[2] for v in VIOLATIONS])
def test_a_violation_is_caught_and_named(tmp_path, where, source, expected):
    """Each rule fails on an import that breaks it, naming the module and the import."""
    root = tmp_path / "tunnelgate"
    path = root / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    found = violations(all_imports(root))
    assert len(found) >= 1 and any(expected in f for f in found), found


ALLOWED = [
    ("cli.py", "def _foreground():\n    from .daemon.client import ClientDaemon\n"),
    ("cli.py", "def _ask():\n    from .daemon.control import request\n"),
    ("tui/source.py", "from ..daemon.control import request\n"),
    ("session.py", "from .offload.chunks import DATA_CHUNK\n"),   # a wire format, no I/O
    ("session.py", "from contextlib import nullcontext\nimport itertools\n"),
]


@pytest.mark.parametrize("where,source", ALLOWED, ids=[a[0] for a in ALLOWED])
def test_what_the_layers_allow_passes(tmp_path, where, source):
    root = tmp_path / "tunnelgate"
    path = root / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    assert violations(all_imports(root)) == []
