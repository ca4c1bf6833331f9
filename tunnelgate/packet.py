"""IPv4/IPv6 header parsing for metering: version, source, destination, total length.

Addresses stay raw bytes (4 or 16) on the hot path; text only for messages/status.
``parse`` never raises: a malformed header gives ``None`` (the caller drops and
counts the packet).  ``parse_strict`` raises ``PacketError`` instead.
"""

from __future__ import annotations

import ipaddress


class PacketError(ValueError):
    pass


def parse(buf: bytes) -> tuple[int, bytes, bytes, int] | None:
    """(version, src, dst, total_length from the IP header) or None if malformed.

    The length is the one in the header (IPv4 total length; IPv6 40 + payload
    length), which is what both daemons meter; it must fit in ``buf``.
    """
    n = len(buf)
    if n < 1:
        return None
    v = buf[0] >> 4
    if v == 4:
        if n < 20:
            return None
        ihl = (buf[0] & 0x0F) * 4
        total = (buf[2] << 8) | buf[3]
        if ihl < 20 or total < ihl or total > n:
            return None
        return 4, buf[12:16], buf[16:20], total
    if v == 6:
        if n < 40:
            return None
        total = 40 + ((buf[4] << 8) | buf[5])
        if total > n:
            return None
        return 6, buf[8:24], buf[24:40], total
    return None


def parse_strict(buf: bytes) -> tuple[int, bytes, bytes, int]:
    r = parse(buf)
    if r is None:
        raise PacketError(f"not a valid IPv4/IPv6 header ({len(buf)} bytes)")
    return r


def dst_and_length(buf: bytes) -> tuple[bytes, int] | None:
    """Fast path for the forwarder: (dst, length) or None."""
    n = len(buf)
    if n >= 20 and buf[0] >> 4 == 4:
        total = (buf[2] << 8) | buf[3]
        ihl = (buf[0] & 0x0F) * 4
        if ihl >= 20 and ihl <= total <= n:
            return buf[16:20], total
        return None
    if n >= 40 and buf[0] >> 4 == 6:
        total = 40 + ((buf[4] << 8) | buf[5])
        if total <= n:
            return buf[24:40], total
    return None


def src_and_length(buf: bytes) -> tuple[bytes, int] | None:
    n = len(buf)
    if n >= 20 and buf[0] >> 4 == 4:
        total = (buf[2] << 8) | buf[3]
        ihl = (buf[0] & 0x0F) * 4
        if ihl >= 20 and ihl <= total <= n:
            return buf[12:16], total
        return None
    if n >= 40 and buf[0] >> 4 == 6:
        total = 40 + ((buf[4] << 8) | buf[5])
        if total <= n:
            return buf[8:24], total
    return None


# --- addresses and prefixes -------------------------------------------------------------

def addr_bytes(addr: bytes | str) -> bytes:
    """Raw 4/16-byte address from bytes or text."""
    if isinstance(addr, (bytes, bytearray)):
        if len(addr) not in (4, 16):
            raise PacketError(f"address must be 4 or 16 bytes, got {len(addr)}")
        return bytes(addr)
    try:
        return ipaddress.ip_address(addr).packed
    except ValueError:
        raise PacketError(f"not an IP address: {addr!r}") from None


def addr_text(addr: bytes) -> str:
    return str(ipaddress.ip_address(bytes(addr)))


def mask(addr: bytes, plen: int) -> bytes:
    """addr with all bits after ``plen`` cleared."""
    bits = len(addr) * 8
    if plen >= bits:
        return addr
    v = int.from_bytes(addr, "big") & (((1 << plen) - 1) << (bits - plen))
    return v.to_bytes(len(addr), "big")


def prefix_text(key: bytes, plen: int) -> str:
    """Destination text used in messages: "198.18.2.7/32", "2001:db8::/48"."""
    return f"{addr_text(key)}/{plen}"


def parse_prefix(text: str) -> tuple[bytes, int]:
    """"198.18.2.0/24" (strict: no host bits) -> (key bytes, plen).  A bare address is a host."""
    if not isinstance(text, str):
        raise PacketError(f"not a prefix: {text!r}")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise PacketError(f"not a network prefix (host bits must be zero): {text!r}") from None
    return net.network_address.packed, net.prefixlen

