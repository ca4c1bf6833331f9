"""The lab, benchmarks and demo of tunnelgate, beside the package and not in
it: scripts/ run these modules from the repository root and tests/ import
them (pytest's pythonpath); nothing in tunnelgate/ imports them."""
