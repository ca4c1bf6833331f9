"""Token buckets per key (a source address), in a bounded table: what the
gateway's handshake worker uses to cap the key exchanges one source can ask
for (as WireGuard's ratelimiter.go: 20 per second, bursts of 5). Sans-IO:
`now` is an argument."""

from __future__ import annotations


class TokenBuckets:
    """allow(key, now): a bucket of `burst` tokens per key, refilled at `rate`
    per second; each allowed event takes one. At most `max_keys` buckets: when
    full, the least recently used one is forgotten (O(1); the longest idle is
    the likeliest to be full again, which is what a new key starts with)."""

    def __init__(self, rate: float = 20.0, burst: float = 5.0, max_keys: int = 4096) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("TokenBuckets: rate > 0, burst >= 1 and max_keys >= 1 please")
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: dict[object, list[float]] = {}     # key -> [tokens, at]

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key, now: float) -> bool:
        buckets = self._buckets
        b = buckets.pop(key, None)
        if b is None:
            if len(buckets) >= self.max_keys:
                del buckets[next(iter(buckets))]
            buckets[key] = [self.burst - 1, now]
            return True
        buckets[key] = b        # to the end: the table's order is least recently used first
        tokens = min(self.burst, b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if tokens < 1:
            b[0] = tokens
            return False
        b[0] = tokens - 1
        return True
