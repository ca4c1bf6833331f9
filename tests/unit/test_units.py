"""The systemd units in conf/ start a tunnelgate that exists where scripts/setup puts it."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = sorted((Path(__file__).parents[2] / "conf").glob("*.service"))


def exec_lines(unit: Path) -> list[str]:
    return [line.split("=", 1)[1].split()[0] for line in unit.read_text().splitlines()
            if line.startswith(("ExecStart=", "ExecStop="))]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_starts_an_existing_tunnelgate(unit):
    programs = exec_lines(unit)
    assert programs, f"{unit.name} has no ExecStart"
    for program in programs:
        assert os.path.isfile(program) and os.access(program, os.X_OK), \
            f"{unit.name}: {program} does not exist or is not executable; run scripts/setup"


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_passes_systemd_analyze_verify(unit, tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    copy = tmp_path / unit.name         # verify looks for the unit's name, not its path
    copy.write_text(unit.read_text())
    p = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
