"""Integration fixtures: a three-namespace lab per test (see tglab/lab.py).

Tests here need root, network namespaces and /dev/net/tun; mark them
``@pytest.mark.root`` (or ``pytestmark = pytest.mark.root``). Without root
they are skipped with the reason.
"""

from __future__ import annotations

import os
import secrets
import shutil

import pytest

from tglab.lab import Lab

LAB_PREFIX = "tgt"      # every test lab is tgt + 5 hex: tgtXXXXX-client/-gw/-up


def root_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network namespaces and /dev/net/tun (run the integration tests as root)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun missing: load the tun module (modprobe tun)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} not installed: run scripts/setup"
    return None


@pytest.fixture(autouse=True)
def _skip_root_tests_without_root(request):
    if request.node.get_closest_marker("root"):
        reason = root_skip_reason()
        if reason:
            pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _cleanup_stale_labs():
    """Delete tgt* labs left by dead test runs (labs of live runs are kept)."""
    if root_skip_reason() is None:
        Lab.cleanup_stale(LAB_PREFIX)
    yield


def new_prefix() -> str:
    return LAB_PREFIX + secrets.token_hex(3)[:5]


@pytest.fixture
def lab():
    reason = root_skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab(new_prefix())
    try:
        lab.build()
        yield lab
    finally:
        lab.destroy()


@pytest.fixture
def market_lab():
    """tglab.topology.market(3): a client and three gateways on one bridged LAN, each
    gateway with its own uplink to one upstream host."""
    from tglab.topology import market
    reason = root_skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab(new_prefix(), market(3))
    try:
        lab.build()
        yield lab
    finally:
        lab.destroy()


@pytest.fixture
def market(market_lab):
    """make(prices, **kw): a tglab.market_env.MarketEnv on market_lab, its gateways served and
    its client up; their logs are printed after the test."""
    from tglab.market_env import MarketEnv
    envs = []

    def make(prices, **kw):
        e = MarketEnv(market_lab, prices, **kw)
        envs.append(e)
        for i in prices:
            e.serve(i)
        e.up()
        return e
    yield make
    for e in envs:
        print(e.logs())
        e.close()


@pytest.fixture
def env(lab):
    """A gateway and a client on the lab with default configs (tgenv.TunnelEnv); a test
    module that needs other configs defines its own `env`. The daemons' logs are printed
    after the test, so a failure shows them."""
    from tgenv import TunnelEnv
    e = TunnelEnv(lab)
    yield e
    logs = e.logs()
    e.close()
    print(logs)
