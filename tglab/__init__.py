"""The lab, benchmarks and demo of tunnelgate: network-namespace labs
(lab.py, built from topology.py), the data-path and scale benchmarks, the
payment benchmark, the demo. Not part of the installed package: scripts/
run these modules from the repository root and tests/ import them (pytest's
pythonpath), and nothing in tunnelgate/ imports them.

Empty on purpose, so that importing one pure module of it (bench_report,
engines, topology) imports no other.
"""
