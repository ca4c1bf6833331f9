"""scripts/demo's options: a mistyped one is an error, not a demo run."""

from __future__ import annotations

import pytest

from tglab.demo import parse_args


def test_options_parse():
    a = parse_args(["--dummy", "--no-tui"])
    assert a.dummy and a.no_tui
    a = parse_args([])
    assert not a.dummy and not a.no_tui


@pytest.mark.parametrize("argv, code", [(["--help"], 0), (["--dumy"], 2), (["now"], 2)])
def test_help_and_unknown_options_exit_before_building_anything(argv, code, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == code
    out = capsys.readouterr()
    assert "usage: scripts/demo" in out.out + out.err
