"""Static X25519 keys on disk: one base64 line, mode 0600, like wg(8)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from .config import decode_key


class KeyError_(Exception):
    pass


def generate() -> bytes:
    return X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def write_private(path: Path, private: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: never overwrite a key silently; a lost key is a lost identity (and address, and credit).
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyError_(f"{path} already exists; remove it first if you really want a new identity") from None
    with os.fdopen(fd, "w") as f:
        f.write(b64(private) + "\n")


def read_private(path: Path) -> bytes:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KeyError_(f"private key file {path} does not exist; create it with "
                        f"`tunnelgate keygen --out {path}`") from None
    except PermissionError:
        raise KeyError_(f"cannot read private key file {path}: permission denied; run as root") from None
    try:
        key = decode_key(text)
    except ValueError as e:
        raise KeyError_(f"{path} is not a tunnelgate private key ({e}); "
                        "create one with `tunnelgate keygen`") from None
    if path.stat().st_mode & 0o077:
        raise KeyError_(f"private key file {path} is readable by others; run `chmod 600 {path}`")
    return key
