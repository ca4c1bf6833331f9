"""Payment backends, chosen by name (``payment.backend`` in the config).

    backend = load_backend("cashu", settings, role="payee", journal=journal)

``role``: "payer" (client) or "payee" (gateway); default ``settings["role"]``,
else "payer". A payee needs a :class:`Journal`: pass ``journal=`` (a Journal
or a path), or ``settings["journal"]``, or ``settings["state_dir"]`` (the
journal is then ``<state_dir>/payments.sqlite``).

Backends: ``dummy`` (no money, says so), ``cashu`` (ecash, needs
scripts/install-payments), ``bitcoind`` (Bitcoin Core/Knots wallet RPC), ``electrum``
(an Electrum 4 daemon's JSON-RPC: Lightning, or on-chain).
The real ones are imported only when chosen (cashu takes ~0.5-4 s to import).
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Mapping

from ..payment_backends import BACKENDS
from .base import Journal, PayeeBackend, PayerBackend, PaymentError, Record, Terms, Verdict

__all__ = ["load_backend", "BACKENDS", "Journal", "PayeeBackend", "PayerBackend",
           "PaymentError", "Record", "Terms", "Verdict"]


def load_backend(name: str, settings: Mapping[str, Any] | None = None, *, role: str | None = None,
                 journal: Journal | str | os.PathLike | None = None) -> PayerBackend | PayeeBackend:
    settings = dict(settings or {})
    if name not in BACKENDS:
        raise PaymentError(f"unknown payment backend {name!r}; choose one of: {', '.join(sorted(BACKENDS))}")
    role = role or settings.get("role") or "payer"
    if role not in ("payer", "payee"):
        raise PaymentError(f"payment role must be 'payer' (client) or 'payee' (gateway), not {role!r}")
    modname, payer_cls, payee_cls = BACKENDS[name]
    try:
        mod = importlib.import_module(modname)
    except ImportError as e:
        raise PaymentError(f"payment backend {name!r} is not installed ({e}); "
                           "run scripts/install-payments") from e
    if role == "payer":
        return getattr(mod, payer_cls)(settings)
    if journal is None:
        journal = settings.get("journal")
    if journal is None and settings.get("state_dir"):
        journal = os.path.join(os.fspath(settings["state_dir"]), "payments.sqlite")
    if journal is None:
        raise PaymentError(f"payment backend {name!r} on the gateway needs a journal "
                           "(pass journal= or set state_dir)")
    if not isinstance(journal, Journal):
        journal = Journal(journal)
    return getattr(mod, payee_cls)(settings, journal)
