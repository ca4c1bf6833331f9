"""Fetch the current wireguard-go from Debian sid into a private cache.

Debian 12 ships wireguard-go 0.0.20220316; sid ships a newer one with TUN and
UDP offloads (see ../shared/PERFORMANCE.md). The sid package is a static
binary, so `apt-get download` into a private directory and `dpkg-deb -x`
give a runnable `usr/bin/wireguard-go` on Debian 12.

Nothing on the system changes: apt runs with its own sources list, state
dir and cache under the cache dir (default `<repo>/.cache/wireguard-go-sid`).

    python -m tglab.wggo_fetch [--cache DIR]   prints the binary's path
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

SUITE = "sid"
PACKAGE = "wireguard-go"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "wireguard-go-sid"


class FetchError(Exception):
    """The sid wireguard-go could not be had; the message says why."""


def _mirror() -> str:
    """The Debian mirror the system already uses (not security)."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        for line in deb822.read_text().splitlines():
            m = re.match(r"\s*URIs:\s*(\S+)", line)
            if m and "security" not in m.group(1):
                return m.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if parts and parts[0] == "deb" and "security" not in line:
                for p in parts[1:]:
                    if re.match(r"(https?|file):", p):
                        return p
    raise FetchError("cannot find the Debian mirror in /etc/apt sources")


def _apt_opts(d: Path) -> list[str]:
    return [
        f"-o=Dir::Etc={d}/etc", f"-o=Dir::Etc::sourcelist={d}/etc/sources.list",
        f"-o=Dir::Etc::sourceparts={d}/etc/sources.list.d",
        f"-o=Dir::Etc::preferencesparts={d}/etc/preferences.d",
        f"-o=Dir::State={d}/state", "-o=Dir::State::status=/dev/null",
        f"-o=Dir::Cache={d}/cache", "-o=Debug::NoLocking=1",
        "-o=APT::Architecture=amd64", "-o=APT::Architectures::=amd64",
        "-o=APT::Sandbox::User=root", "-o=Acquire::Retries=2",
    ]


def binary_path(cache: Path = DEFAULT_CACHE) -> Path:
    return cache / "root" / "usr" / "bin" / "wireguard-go"


def version_of(binary: str | Path) -> str:
    """First line of `wireguard-go --version`, e.g. 'wireguard-go v0.0.20220316'."""
    try:
        r = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    lines = (r.stdout or r.stderr).strip().splitlines()
    return lines[0] if lines else f"unknown (exit {r.returncode})"


def _runs(binary: Path) -> bool:
    return binary.exists() and version_of(binary).startswith("wireguard-go v")


def fetch(cache: Path = DEFAULT_CACHE, timeout: float = 240) -> Path:
    """Path of a runnable sid wireguard-go, downloading it if the cache has none."""
    cache = Path(cache)
    binary = binary_path(cache)
    if _runs(binary):
        return binary
    if os.geteuid() != 0:
        raise FetchError("needs root (apt-get download with a private state dir)")
    for tool in ("apt-get", "dpkg-deb"):
        if not shutil.which(tool):
            raise FetchError(f"needs {tool} (Debian)")
    apt = cache / "apt"
    for sub in ("etc/sources.list.d", "etc/preferences.d", "state/lists/partial",
                "cache/archives/partial"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    debs = cache / "debs"
    if debs.exists():
        shutil.rmtree(debs)
    debs.mkdir(parents=True)
    (apt / "etc" / "sources.list").write_text(f"deb [signed-by={KEYRING}] {_mirror()} {SUITE} main\n")
    opts = _apt_opts(apt)
    try:
        r = subprocess.run(["apt-get", *opts, "update", "-qq"], capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode:
            raise FetchError(f"apt-get update of Debian {SUITE} failed: {(r.stderr or r.stdout).strip()[-400:]}")
        r = subprocess.run(["apt-get", *opts, "download", "-qq", PACKAGE], cwd=debs,
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            raise FetchError(f"apt-get download {PACKAGE} from {SUITE} failed: "
                             f"{(r.stderr or r.stdout).strip()[-400:]}")
    except subprocess.TimeoutExpired as e:
        raise FetchError(f"apt-get timed out after {timeout:.0f} s ({' '.join(e.cmd[:1] + e.cmd[-2:])})")
    pkgs = sorted(debs.glob(f"{PACKAGE}_*.deb"))
    if not pkgs:
        raise FetchError(f"apt-get download left no {PACKAGE} .deb")
    root = cache / "root"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    r = subprocess.run(["dpkg-deb", "-x", str(pkgs[-1]), str(root)], capture_output=True, text=True,
                       timeout=60)
    if r.returncode:
        raise FetchError(f"dpkg-deb -x failed: {r.stderr.strip()}")
    if not _runs(binary):
        raise FetchError(f"the unpacked {binary} does not run: {version_of(binary)}")
    (cache / "version.txt").write_text(pkgs[-1].name + "\n")
    return binary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    a = ap.parse_args(argv)
    try:
        b = fetch(a.cache)
    except FetchError as e:
        print(f"wggo_fetch: {e}", file=sys.stderr)
        return 3
    print(f"{b}  ({version_of(b)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
