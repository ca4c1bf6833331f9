"""One authenticated client sprays one datagram each to 5,000 destinations through the
real daemons: the gateway's state, event rows and log stay bounded, and it still serves."""
import time

import pytest

from tgenv import TunnelEnv, ping, wait_until
from tunnelgate.daemon.store import EVENTS_MAX
from tglab import spray
from tunnelgate.protocol.seller import Pricing

pytestmark = pytest.mark.root

COUNT = 5000


def test_destination_spray_is_bounded(lab):
    env = TunnelEnv(lab)
    try:
        env.serve()
        env.up()
        assert wait_until(lambda: ping(lab, lab.client, count=1).returncode == 0, 30) is not None, env.logs()
        gw_dir = env.dir / "gw"
        before = spray.measure(gw_dir)
        sent = spray.send_spray(lab, COUNT, rate=5000)
        assert sent["sent"] == COUNT
        time.sleep(3)                    # events flushed, the channel drained
        after = spray.measure(gw_dir)
        mk = spray.market(lab, env.gw_conf)
        peer = mk["peer"]
        limits = Pricing(default_price=0, floor_price=0)
        assert peer["open_proposals"] <= limits.max_pending_proposals
        assert peer["unpaid_contracts"] <= limits.max_unpaid_contracts
        assert peer["held_packets"] <= limits.held_max_packets
        assert peer["drops_proposal_limit"] > 0              # the limit did its work
        assert mk["live_contracts"] < COUNT // 2
        assert mk["control_stats"]["queue_full"] == 0
        assert after["event_rows"] <= EVENTS_MAX
        # today's main: +12,000 lines, 3,900 "is full" warnings, 1.1 MB of daemon.stderr
        assert after["log_lines"] - before["log_lines"] < 1000, env.logs()
        assert after["log_queue_full"] == 0
        assert after["stderr_bytes"] == 0
        # the sprayer itself still gets a legit ping through once its proposals resolve
        assert spray.ping_ok(lab), env.logs()
    finally:
        env.close()
