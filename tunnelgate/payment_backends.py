"""The payment backends by name: where each one's payer and payee classes live.

A module of its own, importing nothing, so that reading a config (which checks
``[payment] backend`` against these names) loads no payment code; the backends
themselves are imported by ``payments.load_backend`` only when chosen.
"""

# name -> (module, payer class, payee class)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "dummy": ("tunnelgate.payments.dummy", "DummyPayer", "DummyPayee"),
    "cashu": ("tunnelgate.payments.cashu", "CashuPayer", "CashuPayee"),
    "bitcoind": ("tunnelgate.payments.bitcoind", "BitcoindPayer", "BitcoindPayee"),
    "electrum": ("tunnelgate.payments.electrum", "ElectrumPayer", "ElectrumPayee"),
}
