"""Payments bench: per backend, on one machine, offline (servers on 127.0.0.1 only):

  * PROPOSE→PAID: from the moment the gateway has the contract's account (what PROPOSE
    carries) to its payment confirmed: the client pays, the gateway verifies and polls until
    final. Median of N sequential contracts.
  * fee/contract: what left the client's wallet beyond the amounts paid, per contract.
  * settled/s: how many contracts one gateway settles per second: N proofs made beforehand,
    then verified all at once (and, on-chain at 1 confirmation, one block mined) until each
    is confirmed.

Rows: dummy, cashu (a local nutshell mint, FakeWallet), bitcoind (Knots regtest, 0-conf),
electrum Lightning (one channel client → gateway), electrum on-chain at 0 and at 1
confirmation (regtest: the block is mined at once; on mainnet add ~10 minutes).

    python -m tglab.bench_payments [--n 20] [--only dummy,cashu,...] [--json FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tunnelgate.payments import Terms, load_backend

REPO = Path(__file__).resolve().parents[1]
ROWS = ("dummy", "cashu", "bitcoind", "electrum-ln", "electrum-chain-0", "electrum-chain-1")


class Row:
    def __init__(self, name: str, payer, payee, amount_msat: int, balance=None, mine=None, note: str = "",
                 ordered: bool = False):
        self.name, self.payer, self.payee, self.amount = name, payer, payee, amount_msat
        self.balance = balance or payer.balance_msat
        self.mine, self.note, self.ordered = mine, note, ordered


async def until_final(payee, cid: str, v, mine=None, timeout: float = 60):
    deadline = time.monotonic() + timeout
    mined = False
    while v.status == "pending" and time.monotonic() < deadline:
        if mine and not mined:
            await asyncio.to_thread(mine)
            mined = True
        await asyncio.sleep(0.05)
        v = await payee.poll(cid)
    return v


async def measure(row: Row, n: int, tag: str) -> dict:
    """n sequential contracts (latency, fee), then n proofs verified at once (rate)."""
    before = await row.balance()
    lat, paid = [], 0
    for i in range(n):
        cid = f"{tag}-s{i}"
        account = await row.payee.account_for(cid)
        t0 = time.perf_counter()
        proof = await row.payer.pay(Terms(cid, row.amount, account=account))
        v = await row.payee.verify(proof, Terms(cid, row.amount, peer="bench", account=account))
        v = await until_final(row.payee, cid, v, row.mine)
        lat.append(time.perf_counter() - t0)
        if v.status != "confirmed":
            raise RuntimeError(f"{row.name}: contract {cid} ended {v.status}: {v.reason}")
        paid += v.amount_msat
    await asyncio.sleep(1)                 # let the wallet see its own spends / change
    fee = (before - await row.balance() - paid) / n
    # the gateway's rate: proofs made first, then settled together
    cids = [f"{tag}-r{i}" for i in range(n)]
    accounts = [await row.payee.account_for(c) for c in cids]
    proofs = [await row.payer.pay(Terms(c, row.amount, account=a)) for c, a in zip(cids, accounts)]
    t0 = time.perf_counter()
    terms = [Terms(c, row.amount, peer="bench", account=a) for c, a in zip(cids, accounts)]
    if row.ordered:       # one payer's transactions build on each other's change: in order
        vs = [await row.payee.verify(p, t) for p, t in zip(proofs, terms)]
    else:
        vs = await asyncio.gather(*(row.payee.verify(p, t) for p, t in zip(proofs, terms)))
    if row.mine:
        await asyncio.to_thread(row.mine)
    vs = await asyncio.gather(*(until_final(row.payee, c, v) for c, v in zip(cids, vs)))
    dt = time.perf_counter() - t0
    bad = [v for v in vs if v.status != "confirmed"]
    if bad:
        raise RuntimeError(f"{row.name}: {len(bad)} of {n} not confirmed: {bad[0].reason}")
    return {"backend": row.name, "n": n, "amount_msat": row.amount,
            "propose_to_paid_ms": round(statistics.median(lat) * 1000, 1),
            "fee_msat_per_contract": round(fee), "settled_per_s": round(n / dt, 1), "note": row.note}


def _run(cmd: list[str], timeout: float = 300) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr[-800:]}")
    return r.stdout


async def bench(only: list[str], n: int) -> list[dict]:
    out: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="tg-bench-pay-"))
    cleanups = []

    async def row(make, name):
        if name not in only:
            return
        try:
            r = await make()
            print(f"bench-payments: {name} ...", file=sys.stderr, flush=True)
            out.append(await measure(r, n if "chain" not in name and name != "bitcoind" else max(3, n // 4),
                                     name))
        except Exception as e:         # a row that cannot run says why, the others go on
            out.append({"backend": name, "error": str(e)[:300]})
            print(f"bench-payments: {name} failed: {e}", file=sys.stderr)

    try:
        async def dummy():
            return Row("dummy", load_backend("dummy", {}), load_backend("dummy", {}, role="payee",
                                                                         journal=tmp / "dummy.sqlite"), 2000)
        await row(dummy, "dummy")

        async def cashu_row():
            from tunnelgate.payments import cashu
            port = _free_port()
            _run([str(REPO / "scripts/mint"), "start", str(tmp / "mint"), "--listen", f"127.0.0.1:{port}"], 120)
            cleanups.append(lambda: _run([str(REPO / "scripts/mint"), "stop", str(tmp / "mint")], 60))
            url = f"http://127.0.0.1:{port}"
            await cashu.fund(str(tmp / "ecash"), 5000, url)
            cashu.keygen(str(tmp / "p2pk.key"))
            payer = load_backend("cashu", {"wallet_dir": str(tmp / "ecash"), "mint_url": url})
            payee = load_backend("cashu", {"mints": [url], "p2pk_key_file": str(tmp / "p2pk.key"),
                                           "wallet_dir": str(tmp / "gw-ecash")}, role="payee",
                                 journal=tmp / "cashu.sqlite")
            return Row("cashu", payer, payee, 2000, note="local mint, FakeWallet Lightning, no input fee")
        await row(cashu_row, "cashu")

        async def bitcoind_row():
            d = tmp / "knots"
            urls = dict(line.split(None, 1) for line in
                        _run([str(REPO / "scripts/regtest"), "start", str(d)], 120).splitlines()[1:])
            cleanups.append(lambda: _run([str(REPO / "scripts/regtest"), "stop", str(d)], 60))
            # one mature coin per block: the rate phase signs many payments before any is broadcast
            _run([str(REPO / "scripts/regtest"), "mine", str(d), "30"], 120)
            payer = load_backend("bitcoind", {"rpc_url": urls["client"].strip(), "fee_rate_sat_vb": "2"})
            payee = load_backend("bitcoind", {"rpc_url": urls["gateway"].strip(), "min_confirmations": 0},
                                 role="payee", journal=tmp / "bitcoind.sqlite")
            return Row("bitcoind", payer, payee, 2_000_000, note="0-conf, 2 sat/vB, one node", ordered=True)
        await row(bitcoind_row, "bitcoind")

        if any(r.startswith("electrum") for r in only):
            from tglab.electrum_world import ElectrumWorld
            why = ElectrumWorld.check_installed()
            if why:
                for name in [r for r in only if r.startswith("electrum")]:
                    out.append({"backend": name, "error": why})
            else:
                world = ElectrumWorld(tmp / "electrum")
                cleanups.append(world.down)
                await asyncio.to_thread(world.up)
                gw, cl = world.wallets["gateway"].url, world.wallets["client"].url
                payer = load_backend("electrum", {"rpc_url": cl, "fee_rate_sat_vb": "2"})

                async def ln():
                    return Row("electrum-ln", payer, load_backend(
                        "electrum", {"rpc_url": gw, "invoice_msat": 2000}, role="payee",
                        journal=tmp / "ln.sqlite"), 2000, note="one invoice per contract, direct channel")
                await row(ln, "electrum-ln")
                for conf in (0, 1):
                    async def chain(conf=conf):
                        # start from confirmed coins: the previous row left a chain of
                        # unconfirmed change in the mempool
                        await asyncio.to_thread(world.mine, 1)
                        await asyncio.to_thread(world.wait_synced)
                        payee = load_backend("electrum", {
                            "rpc_url": gw, "method": "onchain", "min_confirmations": conf,
                            "zeroconf_max_msat": 10**12, "onchain_min_msat": 2_000_000},
                            role="payee", journal=tmp / f"chain{conf}.sqlite")
                        return Row(f"electrum-chain-{conf}", payer, payee, 2_000_000,
                                   mine=(lambda: world.mine(1)) if conf else None, ordered=True,
                                   note="2 sat/vB" + ("; block mined at once (mainnet: ~10 min)" if conf else ""))
                    await row(chain, f"electrum-chain-{conf}")
    finally:
        for c in reversed(cleanups):
            try:
                c()
            except Exception as e:
                print(f"bench-payments: cleanup: {e}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def table(rows: list[dict]) -> str:
    lines = ["| backend | amount/contract | PROPOSE→PAID (median) | fee/contract | settled/s (one gateway) | note |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backend']} | – | – | – | – | could not run: {r['error']} |")
            continue
        lines.append(f"| {r['backend']} | {r['amount_msat']} msat | {r['propose_to_paid_ms']} ms | "
                     f"{r['fee_msat_per_contract']} msat | {r['settled_per_s']} | {r['note']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="contracts per row (on-chain rows: a quarter, >= 3)")
    ap.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows of: {', '.join(ROWS)}")
    ap.add_argument("--json", help="also write the rows as JSON here")
    a = ap.parse_args(argv)
    only = [x.strip() for x in a.only.split(",") if x.strip()]
    unknown = set(only) - set(ROWS)
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    rows = asyncio.run(bench(only, a.n))
    print(table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
