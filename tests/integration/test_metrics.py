"""The gateway's Prometheus endpoint reports real traffic, contracts and revenue."""

import re
import time

import pytest

from tgenv import TunnelEnv, ping
from tglab.lab import GW_LINK, UPSTREAM
from tglab.topology import CLIENT_LINK

pytestmark = pytest.mark.root


def test_metrics_endpoint(lab):
    lab.start_upstream({"1M.bin": 1_000_000})
    env = TunnelEnv(lab, gateway_extra=f'[metrics]\nlisten = "{GW_LINK}:9108"\n',
                    client_extra=f'\n[metrics]\nlisten = "{CLIENT_LINK}:9109"\n')
    try:
        env.serve()
        env.up()
        assert ping(lab, lab.client, count=2).returncode == 0
        lab.run(lab.client, "curl", "-sS", "-o", "/dev/null", f"http://{UPSTREAM}:8080/1M.bin", timeout=60)
        time.sleep(1.2)
        text = lab.run(lab.gw, "curl", "-sS", f"http://{GW_LINK}:9108/metrics").stdout
        key = env.client_public

        def value(pattern):
            m = re.search(pattern, text, re.M)
            assert m, f"{pattern!r} not in metrics:\n{text}"
            return float(m.group(1))
        assert value(r'^tunnelgate_forwarded_bytes_total\{direction="to_peers"\} (\S+)') > 1_000_000
        assert value(r'^tunnelgate_revenue_msat_total\{address="100.64.0.2",peer="' + re.escape(key)
                     + r'"\} (\S+)') > 0
        assert value(r'^tunnelgate_peer_bytes_total\{address="100.64.0.2",direction="down",peer="'
                     + re.escape(key) + r'"\} (\S+)') > 1_000_000
        assert value(r'^tunnelgate_contracts\{state="PAID"\} (\S+)') >= 1
        assert value(r"^tunnelgate_peers (\S+)") == 1
        # the client exports its side: traffic, what it paid, its contracts
        text = lab.run(lab.client, "curl", "-sS", f"http://{CLIENT_LINK}:9109/metrics").stdout
        assert value(r'^tunnelgate_client_bytes_total\{direction="received"\} (\S+)') > 1_000_000
        assert value(r"^tunnelgate_paid_msat_total (\S+)") > 0
        assert value(r'^tunnelgate_contracts\{state="PAID"\} (\S+)') >= 1
        assert value(r'^tunnelgate_committed_msat\{window="total"\} (\S+)') > 0
    finally:
        env.close()
