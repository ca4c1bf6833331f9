"""`tunnelgate config …`: configuration tools (registered in cli.py with
``main.add_command(config_group)``).

    tunnelgate config import net.conf [--role gateway|client] [-o OUT.toml]

prints the TOML on stdout (or writes OUT.toml, never overwriting) and the notes
on stderr. Exit codes as in cli.py: 1 the file cannot be read/written, 2 a value
that cannot be converted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import config_import

EXIT_FAILED, EXIT_CONFIG = 1, 2


def _fail(message: str, code: int) -> None:
    click.echo(f"tunnelgate: {message}", err=True)
    sys.exit(code)


@click.group("config")
def config_group():
    """Configuration tools."""


@config_group.command("import")
@click.argument("seed_file", type=click.Path(dir_okay=False))
@click.option("--role", type=click.Choice(config_import.ROLES),
              help="Convert for this daemon (default: guessed from the keys; gateway when unclear).")
@click.option("-o", "--out", type=click.Path(dir_okay=False),
              help="Write the TOML here (refuses to overwrite) instead of stdout.")
def import_cmd(seed_file, role, out):
    """Convert an original KEY=VALUE config (net.conf) to tunnelgate TOML.

    Notes on stderr say what each key became, what has no equivalent and which
    placeholders to fill in (docs/config.md has the whole mapping)."""
    try:
        text = Path(seed_file).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        _fail(f"cannot read {seed_file}: {e.strerror or e}", EXIT_FAILED)
    try:
        toml_text, notes = config_import.convert(text, role, seed_file)
    except config_import.ConfigImportError as e:
        _fail(str(e), EXIT_CONFIG)
    if out:
        # 0600 when the TOML may hold a password (an RPC URL with credentials)
        mode = 0o600 if "@" in toml_text else 0o644
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            _fail(f"{out} exists; refusing to overwrite it (choose another -o or remove it)", EXIT_FAILED)
        except OSError as e:
            _fail(f"cannot write {out}: {e.strerror or e}", EXIT_FAILED)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(toml_text)
    else:
        click.echo(toml_text, nl=False)
    for note in notes:
        click.echo(note, err=True)
    if out:
        click.echo(f"wrote {out}", err=True)
