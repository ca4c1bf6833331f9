"""Least privilege: once a daemon's TUN, routes and nft table are set up, it becomes
``[daemon] user`` (default "tunnelgate", a system user scripts/setup creates) and keeps
only the capabilities it still needs.

What is still needed after set-up: CAP_NET_ADMIN, and nothing else. The client sets its
tunnel address, routes and kill switch after the handshake (and again when the gateway
moves or changes its address); both daemons undo their routes, nft tables and forwarding
sysctls at stop (net/setup.teardown). Those go through netlink (pyroute2), /proc/sys/net
(writable with CAP_NET_ADMIN in the namespace) and the ``nft`` program, which inherits
the capability as an ambient one.

Capabilities are per thread in Linux: only the thread that calls ``drop`` keeps
CAP_NET_ADMIN (glibc moves every thread to the new uid, and the others lose all their
capabilities with it). Threads started afterwards inherit the caller's set, so the
daemon gives asyncio a fresh default executor after the drop (``asyncio.to_thread``
runs the network changes).

Python's standard library has no capset: it is called through ctypes (libc's ``capset``
and ``prctl``), so no C build dependency is needed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import stat
from pathlib import Path

log = logging.getLogger("tunnelgate")

KEEP = ("CAP_NET_ADMIN",)
CAP_NUMBERS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
               "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
               "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12,
               "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_SYS_MODULE": 16, "CAP_SYS_CHROOT": 18,
               "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
               "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29,
               "CAP_SETFCAP": 31, "CAP_BPF": 39}
_NAMES = {v: k for k, v in CAP_NUMBERS.items()}

PR_CAPBSET_DROP = 24
PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
_CAP_VERSION_3 = 0x20080522


class PrivilegeError(Exception):
    pass


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(*args: int) -> None:
    if _libc.prctl(*(ctypes.c_ulong(a) for a in args), *(ctypes.c_ulong(0),) * (5 - len(args))) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl{args}: {os.strerror(e)}")


def _capset(mask: int) -> None:
    """This thread's effective, permitted and inheritable sets all become ``mask``."""
    header = _Header(_CAP_VERSION_3, 0)
    data = (_Data * 2)(*[_Data(m, m, m) for m in (mask & 0xFFFFFFFF, mask >> 32)])
    if _libc.capset(ctypes.byref(header), data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"capset: {os.strerror(e)}")


def _mask(names) -> int:
    return sum(1 << CAP_NUMBERS[n] for n in names)


def names(mask: int) -> list[str]:
    return [_NAMES.get(i, f"cap_{i}") for i in range(64) if mask >> i & 1]


def current() -> dict:
    """Who this thread runs as and its effective capabilities (for `status`)."""
    fields = {}
    for line in Path("/proc/thread-self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    uid = int(fields["Uid"][1])
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    eff = int(fields["CapEff"][0], 16)
    return {"user": user, "uid": uid, "capabilities": names(eff)}


def _reachable(path: Path, pw) -> Path | None:
    """The first directory above ``path`` the user cannot search, if any (``path`` itself
    becomes the user's)."""
    groups = {pw.pw_gid}
    for d in reversed(path.resolve().parents):
        st = os.stat(d)
        bit = (stat.S_IXUSR if st.st_uid == pw.pw_uid else
               stat.S_IXGRP if st.st_gid in groups else stat.S_IXOTH)
        if not st.st_mode & bit:
            return d
    return None


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    os.chown(top, uid, gid, follow_symlinks=False)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def drop(user: str, state_dir: Path, keep: tuple[str, ...] = KEEP) -> dict:
    """Become ``user`` keeping only ``keep`` (effective, permitted, inheritable, ambient
    and, where allowed, the bounding set); state_dir and all in it are given to the user
    first. "root" keeps root (a warning); a process that is not root has nothing to drop.
    Returns current()."""
    if user == "root":
        log.warning("running as root for the whole life of the daemon ([daemon] user = \"root\"); "
                    "set [daemon] user to an unprivileged account (scripts/setup makes \"tunnelgate\")")
        return current()
    if os.geteuid() != 0:
        return current()
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"[daemon] user {user!r} does not exist; create it (scripts/setup does: "
                             f"useradd --system --no-create-home --shell /usr/sbin/nologin {user}) or set "
                             "[daemon] user = \"root\" to keep root") from None
    if pw.pw_uid == 0:
        return drop("root", state_dir, keep)
    blocked = _reachable(state_dir, pw)
    if blocked is not None:
        raise PrivilegeError(f"user {user!r} cannot reach state_dir {state_dir}: {blocked} is mode "
                             f"{stat.S_IMODE(os.stat(blocked).st_mode):04o} owned by uid {os.stat(blocked).st_uid}; "
                             "put state_dir where that user can search every parent directory "
                             "(e.g. /var/lib/tunnelgate/...) or set [daemon] user = \"root\"")
    _chown_tree(state_dir, pw.pw_uid, pw.pw_gid)
    mask = _mask(keep)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        if not mask >> cap & 1:
            try:
                _prctl(PR_CAPBSET_DROP, cap)
            except OSError:
                break       # no CAP_SETPCAP (a systemd CapabilityBoundingSet already applies)
    _prctl(PR_SET_KEEPCAPS, 1)
    try:
        os.setgroups([])
        os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
        os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    finally:
        _prctl(PR_SET_KEEPCAPS, 0)
    _capset(mask)
    for name in keep:
        # so that the `nft` program the daemon runs has them too
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NUMBERS[name])
    now = current()
    if now["uid"] != pw.pw_uid or set(now["capabilities"]) != set(keep):
        raise PrivilegeError(f"dropping privileges went wrong: running as uid {now['uid']} with "
                             f"{', '.join(now['capabilities']) or 'no capabilities'}")
    log.info("running as %s (uid %d), keeping %s", user, pw.pw_uid, ", ".join(keep) or "no capabilities")
    return now
