"""For every test folder: the helper modules in tests/support (plain modules on pythonpath,
imported by test modules) get pytest's assertion rewriting, as the test modules they came from
had, so a failing assert in a World, a Lab or a FakeClient still shows its values."""
from pathlib import Path

import pytest

pytest.register_assert_rewrite(*sorted(p.stem for p in (Path(__file__).parent / "support").glob("*.py")))
