"""`tunnelgate status` for people: the fields of `status --json`, laid out."""

from __future__ import annotations

import time


def _age(ts: float | None) -> str:
    if not ts:
        return "never"
    s = int(time.time() - ts)
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago"


def _bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def render(st: dict) -> str:
    stats = st.get("stats", {})
    lines = []
    if st["role"] == "client":
        state = "connected" if st.get("connected") else "connecting"
        lines += [
            f"client   {state}, pid {st['pid']}, up {st['uptime_s']:.0f} s",
            f"gateway  {st.get('gateway')}  key {st.get('gateway_public_key')}",
            f"tunnel   {st['tun']} {st.get('address') or '(no address yet)'}  routes {', '.join(st.get('routes', []))}",
            f"handshake {_age(st.get('last_handshake'))}",
        ]
    else:
        lines += [
            f"gateway  pid {st['pid']}, up {st['uptime_s']:.0f} s, listening on {st.get('listen')}",
            f"tunnel   {st['tun']} {st.get('address')}  upstream {st.get('upstream_interface')}",
            f"peers    {len(st.get('peers', []))}",
        ]
        for p in st.get("peers", []):
            lines.append(f"  {p['address'] or '-':<15} {p['endpoint'] or '-':<22} {p['public_key']}")
    lines.append(f"traffic  sent {_bytes(stats.get('tx_bytes', 0))} ({stats.get('tx_packets', 0)} packets), "
                 f"received {_bytes(stats.get('rx_bytes', 0))} ({stats.get('rx_packets', 0)} packets)")
    drops = {k: v for k, v in {**stats, **st.get("session_stats", {})}.items()
             if v and (k.startswith("drop") or k in ("bad_mac", "replay", "malformed", "unknown_index",
                                                      "stale_handshake"))}
    if drops:
        lines.append("dropped  " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    return "\n".join(lines)
