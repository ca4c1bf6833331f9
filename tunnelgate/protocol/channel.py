"""Reliable, ordered control channel over an unreliable frame transport (sans-IO).

Carried inside the encrypted session as opaque frames.  Every frame has a fixed
37-byte header followed by the payload (DATA) or nothing (ACK)::

    kind u8 | epoch u64 | base u32 | seq u32 | ack_epoch u64 | cum_ack u32 | sack u64

* ``epoch`` is the sender's stream id, chosen by the caller (new per process start
  or per session, e.g. random 64 bits); ``base`` is the sender's lowest unacked seq.
* ``ack_epoch``/``cum_ack``/``sack`` acknowledge the *peer's* stream: every seq
  below ``cum_ack`` was received; bit i of ``sack`` means ``cum_ack + 1 + i`` was.
  Acks for another epoch than ours are ignored.
* A frame with a new peer epoch means the peer restarted: the receive side resets
  and starts at that frame's ``base`` (messages acked by the old instance are not
  redelivered, unacked ones are).  Retired epochs are remembered (last 16) so a
  late frame from the old instance cannot flip the state back.
* Retransmission per message after the channel's RTO, measured as in RFC 6298:
  smoothed RTT and RTT variance from acknowledged sequence numbers (Karn's rule:
  only messages sent once give a sample), RTO = SRTT + 4 RTTVAR within ``MIN_RTO``
  (50 ms) .. ``MAX_RTO`` (2 s); ``INITIAL_RTO`` (0.2 s) until the first sample.  A
  timeout doubles the message's RTO (up to ``MAX_RTO``) and backs off the channel's
  RTO until the next sample.  As in TCP, a timeout resends the oldest timed-out message
  and those the peer's selective acks show lost (a later seq arrived); other timed-out
  ones wait one more RTO (under load their acks are late, not lost).  At most ``WINDOW`` (64) messages in flight, at most
  ``max_queue`` waiting; ``send`` raises ``ChannelFull`` beyond that.
* Sequence numbers are u32: reset the channel (new epoch) before 2**32 messages.

Timers only through ``now``.  ``receive`` never raises on peer input: bad frames
are dropped and counted in ``stats``.
"""

from __future__ import annotations

import struct

from tunnelgate.protocol.messages import ProtocolError

HEADER = struct.Struct("!BQIIQIQ")
DATA, ACK = 1, 2
WINDOW = 64
INITIAL_RTO = 0.2
MIN_RTO = 0.05
MAX_RTO = 2.0
CLOCK_G = 0.005        # timer granularity term of the RTO (RFC 6298 "G")
MAX_PAYLOAD = 8192
RETIRED_EPOCHS = 16


class ChannelFull(ProtocolError):
    pass


class _Inflight:
    __slots__ = ("payload", "due", "rto", "sends", "sent_at")

    def __init__(self, payload: bytes):
        self.payload, self.due, self.rto, self.sends, self.sent_at = payload, 0.0, INITIAL_RTO, 0, 0.0


STATS = ("sent", "retransmits", "received", "duplicates", "out_of_window", "bad_frames", "stale_epoch",
         "peer_resets")


class Channel:
    """One per peer at a gateway, so in slots, its counters too (``stats`` builds their
    dict), its send queue a list (a deque's first block is 520 bytes) and its retired
    epochs a tuple."""

    __slots__ = ("max_queue", "epoch", "_next_seq", "_queue", "_inflight", "_max_acked", "peer_epoch",
                 "_expected", "_buffer", "_retired", "_ack_due", "srtt", "rttvar", "rto",
                 *("n_" + k for k in STATS))

    def __init__(self, epoch: int, max_queue: int = 1024):
        if not 0 <= epoch < 2**64:
            raise ValueError("epoch must be an unsigned 64-bit integer")
        self.max_queue = max_queue
        for k in STATS:
            setattr(self, "n_" + k, 0)
        self._reset_local(epoch)
        self.peer_epoch: int | None = None
        self._expected = 0
        self._buffer: dict[int, bytes] = {}
        self._retired: tuple[int, ...] = ()         # the peer's last RETIRED_EPOCHS epochs
        self._ack_due: float | None = None
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = INITIAL_RTO
        self._max_acked = -1

    @property
    def stats(self) -> dict[str, int]:
        return {k: getattr(self, "n_" + k) for k in STATS}

    def _reset_local(self, epoch: int) -> None:
        self.epoch = epoch
        self._next_seq = 0
        self._queue: list[bytes] = []
        self._inflight: dict[int, _Inflight] = {}
        self._max_acked = -1          # highest of our seqs the peer acknowledged

    # --- sending ----------------------------------------------------------------------------

    def send(self, msg: bytes) -> None:
        if len(msg) > MAX_PAYLOAD:
            raise ProtocolError(f"control message of {len(msg)} bytes exceeds {MAX_PAYLOAD}")
        if len(self._queue) >= self.max_queue:
            raise ChannelFull(f"control channel queue full ({self.max_queue} messages waiting)")
        self._queue.append(bytes(msg))

    def reset(self, epoch: int, keep_pending: bool = True) -> None:
        """Start a new local stream (e.g. new session).  Unacked and queued messages are
        resent under the new epoch when keep_pending (their order is kept)."""
        pending = [self._inflight[s].payload for s in sorted(self._inflight)] + list(self._queue)
        self._reset_local(epoch)
        if keep_pending:
            self._queue.extend(pending)

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged (in flight + queued)."""
        return len(self._inflight) + len(self._queue)

    def _base(self) -> int:
        return min(self._inflight) if self._inflight else self._next_seq

    def _ack_fields(self) -> tuple[int, int, int]:
        sack = 0
        exp = self._expected
        for s in self._buffer:
            i = s - exp - 1
            if 0 <= i < 64:
                sack |= 1 << i
        return (self.peer_epoch or 0), exp, sack

    def poll(self, now: float) -> list[bytes]:
        """Frames to transmit now: new data, retransmissions, and an ack if one is due."""
        room = WINDOW - len(self._inflight)
        if self._queue and room > 0:
            q, take = self._queue, self._queue[:room]
            del q[:room]
            for payload in take:
                self._inflight[self._next_seq] = _Inflight(payload)
                self._next_seq += 1
        out: list[bytes] = []
        if not self._inflight and self._ack_due is None:
            return out
        ack_epoch, cum, sack = self._ack_fields()
        base = self._base()
        backoff = False
        first = True
        for seq, f in self._inflight.items():
            if f.sends and f.due > now:
                continue
            if f.sends:
                # as TCP: a timeout resends the oldest message, and those the peer's selective
                # acks show lost (a later one arrived); the others wait one more RTO (their
                # acks are most likely just late: no storm of spurious resends under load)
                if not first and seq > self._max_acked:
                    f.due = now + f.rto
                    continue
                first = False
                self.n_retransmits += 1
                f.rto = min(f.rto * 2, MAX_RTO)
                backoff = True
            else:
                f.rto, f.sent_at = self.rto, now
            f.sends += 1
            f.due = now + f.rto
            self.n_sent += 1
            out.append(HEADER.pack(DATA, self.epoch, base, seq, ack_epoch, cum, sack) + f.payload)
        if self._ack_due is not None and not out:
            out.append(HEADER.pack(ACK, self.epoch, base, 0, ack_epoch, cum, sack))
        self._ack_due = None
        if backoff:              # RFC 6298 5.5: back off until a new sample
            self.rto = min(self.rto * 2, MAX_RTO)
        return out

    def _sample(self, r: float) -> None:
        """One RTT measurement (RFC 6298 2.2/2.3)."""
        if self.srtt is None:
            self.srtt, self.rttvar = r, r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        self.rto = min(max(self.srtt + max(CLOCK_G, 4 * self.rttvar), MIN_RTO), MAX_RTO)

    def next_deadline(self) -> float | None:
        """When poll() must next run; a value <= now (even 0.0) means now.  None: idle."""
        if self._queue and len(self._inflight) < WINDOW:
            return 0.0
        d = self._ack_due
        for f in self._inflight.values():
            t = f.due if f.sends else 0.0
            if d is None or t < d:
                d = t
        return d

    # --- receiving --------------------------------------------------------------------------

    def receive(self, frame: bytes, now: float) -> list[bytes]:
        """Process one frame from the peer; returns newly deliverable messages, in order."""
        if len(frame) < HEADER.size:
            self.n_bad_frames += 1
            return []
        kind, epoch, base, seq, ack_epoch, cum, sack = HEADER.unpack_from(frame)
        if kind not in (DATA, ACK) or (kind == ACK and len(frame) != HEADER.size) \
                or len(frame) - HEADER.size > MAX_PAYLOAD:
            self.n_bad_frames += 1
            return []
        if epoch != self.peer_epoch:
            if epoch in self._retired:
                self.n_stale_epoch += 1
                return []
            if self.peer_epoch is not None:
                self._retired = (*self._retired, self.peer_epoch)[-RETIRED_EPOCHS:]
                self.n_peer_resets += 1
            self.peer_epoch = epoch
            self._expected = base
            self._buffer.clear()
        elif base > self._expected:
            # the peer saw acks for these from a previous instance of us: they were delivered
            self._expected = base
            for s in [s for s in self._buffer if s < base]:
                del self._buffer[s]
        if ack_epoch == self.epoch:
            self._on_ack(cum, sack, now)
        if kind == ACK:
            return []
        self._ack_due = now if self._ack_due is None else self._ack_due
        exp = self._expected
        if seq < exp or seq in self._buffer:
            self.n_duplicates += 1
            return []
        if seq >= exp + WINDOW:
            self.n_out_of_window += 1
            return []
        self._buffer[seq] = bytes(frame[HEADER.size:])
        out = []
        buf = self._buffer
        while exp in buf:
            out.append(buf.pop(exp))
            exp += 1
        self._expected = exp
        self.n_received += len(out)
        return out

    def _on_ack(self, cum: int, sack: int, now: float) -> None:
        inflight = self._inflight
        if not inflight:
            return
        newest = None               # the latest sent of the newly acked, sent once (Karn)
        if cum - 1 > self._max_acked:
            self._max_acked = cum - 1
        for s in [s for s in inflight if s < cum]:
            f = inflight.pop(s)
            if f.sends == 1 and (newest is None or f.sent_at > newest):
                newest = f.sent_at
        i = 0
        while sack:
            if sack & 1:
                if cum + 1 + i > self._max_acked:
                    self._max_acked = cum + 1 + i
                f = inflight.pop(cum + 1 + i, None)
                if f is not None and f.sends == 1 and (newest is None or f.sent_at > newest):
                    newest = f.sent_at
            sack >>= 1
            i += 1
        if newest is not None and now >= newest:
            self._sample(now - newest)
