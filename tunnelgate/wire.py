"""Datagram layouts of the tunnel, all in one place.

Every datagram starts with a little-endian u32 whose low byte is the type and
whose three high bytes are zero (WireGuard style), so one unpack both reads the
type and checks the reserved bytes: any value outside the known types is
malformed.

  INIT       type=1 | sender_index u32 | noise msg1 | mac1 16 | mac2 16
             (the 8-byte header is the noise prologue, so it is authenticated;
             the MACs: tunnelgate/cookie.py)
  COOKIE     type=8 | receiver_index u32 | nonce 24 | AEAD(cookie) 32
             (the gateway's answer, under load, to an INIT without a valid mac2)
  RESP       type=2 | sender_index u32 | receiver_index u32 | noise msg2
             (msg2's payload starts with sender_index again, authenticated)
  transport  type   | receiver_index u32 | counter u64 | AEAD(payload)
             (type DATA, KEEPALIVE, CONTROL or DATA_PARTIAL)
             (the 16-byte header is the AEAD's associated data)
  chunk      DATA_CHUNK=7 | index u8 | count u8 | 0 | receiver_index u32 | counter u64 | AEAD(payload)
             the one transport type whose high bytes are not zero: chunk
             `index` of `count` cut from one TCP TSO burst; its type word,
             payload and handshake feature: tunnelgate/offload/chunks.py
             (which builds on this module, not the other way round)
"""

from __future__ import annotations

import struct

INIT = 1
RESP = 2
DATA = 3  # payload: one IP packet
KEEPALIVE = 4  # payload: empty
CONTROL = 5  # payload: one opaque control-channel frame
# payload: one IPv4 TCP or UDP packet whose transport checksum field holds only
# the pseudo-header sum (Linux CHECKSUM_PARTIAL): the sender skips summing the
# payload in Python, the receiver hands it to its kernel to finish (virtio-net
# NEEDS_CSUM) or completes it itself. See tunnelgate/offload/headers.py.
DATA_PARTIAL = 6
# 7 is DATA_CHUNK, with its handshake feature FEATURE_CHUNKS: tunnelgate/offload/chunks.py
COOKIE = 8  # a cookie reply (tunnelgate/cookie.py)
# handshake feature: this gateway takes REQUEST limit_kb (protocol/messages.py)
FEATURE_SIZED = "sized"
TRANSPORT_KINDS = frozenset((DATA, KEEPALIVE, CONTROL, DATA_PARTIAL))


TYPE = struct.Struct("<I")
INDEX = struct.Struct("<I")
INIT_HDR = struct.Struct("<II")
RESP_HDR = struct.Struct("<III")
TRANSPORT_HDR = struct.Struct("<IIQ")
# Nonce = 4 zero bytes + the counter as sent, so a datagram decrypts on its own.
NONCE = struct.Struct("<4xQ")
TIMESTAMP = struct.Struct("<Q")

TAG_LEN = 16
KEY_LEN = 32
MAC_LEN = 16
# IK msg1 = e (32) + encrypted s (32 + tag) + encrypted payload (>= timestamp + tag), then mac1, mac2
INIT_MIN = INIT_HDR.size + 32 + 32 + TAG_LEN + TIMESTAMP.size + TAG_LEN + 2 * MAC_LEN
# the largest INIT a client sends: its hello is a short JSON object (session.py refuses longer)
INIT_MAX = 512
COOKIE_LEN = 8 + 24 + 16 + TAG_LEN
# IK msg2 = e (32) + encrypted payload (>= responder index + tag)
RESP_MIN = RESP_HDR.size + 32 + INDEX.size + TAG_LEN
TRANSPORT_MIN = TRANSPORT_HDR.size + TAG_LEN

# WireGuard's limit: stop well before the 64-bit nonce could wrap.
REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
