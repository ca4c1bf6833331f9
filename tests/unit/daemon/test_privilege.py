"""daemon/privilege.py: dropping to the [daemon] user with CAP_NET_ADMIN only."""

import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tunnelgate.daemon import privilege

ROOT = Path(__file__).parents[3]


@pytest.fixture
def open_tmp():
    """A directory in /tmp that everyone can search (pytest's tmp_path is under a 0700 one)."""
    d = Path(tempfile.mkdtemp(prefix="tg-priv-", dir="/tmp"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_capability_names():
    assert privilege.names(1 << 12) == ["CAP_NET_ADMIN"]
    assert privilege.names((1 << 0) | (1 << 40)) == ["CAP_CHOWN", "cap_40"]
    assert privilege.names(0) == []


def test_root_keeps_root_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        now = privilege.drop("root", tmp_path)
    assert now["uid"] == os.getuid()
    assert "running as root" in caplog.text and "[daemon] user" in caplog.text


@pytest.mark.skipif(os.geteuid() != 0, reason="only root has privileges to drop")
def test_a_missing_user_is_an_error_that_says_what_to_do(tmp_path):
    with pytest.raises(privilege.PrivilegeError, match="'tg-no-such-user' does not exist.*useradd.*root"):
        privilege.drop("tg-no-such-user", tmp_path)


def test_a_state_dir_the_user_cannot_reach_is_found(open_tmp):
    closed = open_tmp / "closed"
    (closed / "state").mkdir(parents=True)
    closed.chmod(0o700)
    stranger = pwd.struct_passwd(("x", "x", 54321, 54321, "", "/", "/bin/false"))
    if os.stat(closed).st_uid == 54321:
        pytest.skip("the test's uid is the stranger's")
    assert privilege._reachable(closed / "state", stranger) == closed
    closed.chmod(0o711)
    assert privilege._reachable(closed / "state", stranger) is None


# in a child process: a thread started before the drop, the drop, a thread started after;
# prints what each thread holds and whether the user can write to state_dir
CHILD = r'''
import json, os, sys, threading
from pathlib import Path
from tunnelgate.daemon import privilege
state = Path(sys.argv[1]); (state / "before.db").write_text("x")
gate, out = threading.Event(), {}
def early():
    gate.wait(); out["early"] = privilege.current()
t = threading.Thread(target=early); t.start()
out["main"] = privilege.drop(sys.argv[2], state)
gate.set(); t.join()
late = threading.Thread(target=lambda: out.update(late=privilege.current())); late.start(); late.join()
(state / "after.db").write_text("y")
(state / "before.db").write_text("z")
out["amb"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapAmb")][0]
print(json.dumps(out))
'''


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_drop_keeps_net_admin_in_this_thread_and_new_ones_only(open_tmp):
    try:
        user = pwd.getpwnam("tunnelgate")
    except KeyError:
        pytest.skip("no user tunnelgate: run scripts/setup")
    state = open_tmp / "state"
    state.mkdir(mode=0o700)
    p = subprocess.run([sys.executable, "-c", CHILD, str(state), "tunnelgate"], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    want = {"user": "tunnelgate", "uid": user.pw_uid, "capabilities": ["CAP_NET_ADMIN"]}
    assert out["main"] == want and out["late"] == want
    assert out["early"] == {**want, "capabilities": []}        # a thread from before: nothing
    assert int(out["amb"], 16) == 1 << 12                       # `nft` children get it
    assert {f.name: f.stat().st_uid for f in state.iterdir()} == {"before.db": user.pw_uid,
                                                                   "after.db": user.pw_uid}
