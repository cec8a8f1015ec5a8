"""A decentralized-auth NATS setup for tests: an operator, an account with JetStream, users and creds files.

It writes what the ``nsc`` tool would (operator, account and user JWTs signed with ed25519 nkeys, and a
``.creds`` file), so the tests can run nats-server in operator mode without the tool.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import nkeys

__all__ = ("Operator",)

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED = {"subs": -1, "data": -1, "payload": -1}
_ACCOUNT_LIMITS = {
    **_UNLIMITED, "imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1,
    "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
}  # fmt: skip


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _new_key(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


def _public(key: nkeys.KeyPair) -> str:
    return bytes(key.public_key).decode()


def _jwt(signer: nkeys.KeyPair, subject: str, name: str, nats: dict[str, Any]) -> str:
    claims: dict[str, Any] = {
        "iat": int(time.time()), "iss": _public(signer), "name": name, "sub": subject, "nats": nats,
    }  # fmt: skip
    digest = hashlib.new("sha512_256", json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    signing_input = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(bytes(signer.sign(signing_input.encode())))}"


class Operator:
    """An operator with one JetStream-enabled account; :meth:`server_config` and :meth:`user_creds`."""

    def __init__(self) -> None:
        self._operator = _new_key(nkeys.PREFIX_BYTE_OPERATOR)
        self._account = _new_key(nkeys.PREFIX_BYTE_ACCOUNT)
        self.system = _public(_new_key(nkeys.PREFIX_BYTE_ACCOUNT))  # JetStream needs a system account
        self.operator_jwt = _jwt(
            self._operator, _public(self._operator), "modelbus-test",
            {"system_account": self.system, "type": "operator", "version": 2},
        )  # fmt: skip
        self.system_jwt = _jwt(self._operator, self.system, "SYS", {"type": "account", "version": 2})
        self.account = _public(self._account)
        self.account_jwt = _jwt(
            self._operator, self.account, "modelbus",
            {"limits": _ACCOUNT_LIMITS, "type": "account", "version": 2},
        )  # fmt: skip

    def server_config(self, path: Path) -> Path:
        """A nats-server configuration trusting this operator, with the account preloaded."""
        path.write_text(
            f"operator: {self.operator_jwt}\nresolver: MEMORY\n"
            f"system_account: {self.system}\n"
            f"resolver_preload: {{\n  {self.account}: {self.account_jwt}\n"
            f"  {self.system}: {self.system_jwt}\n}}\n"
        )
        return path

    def user_creds(self, path: Path, *, name: str = "modelbus", signed_by_stranger: bool = False) -> Path:
        """A ``.creds`` file for a new user of the account (or of an account the server does not know)."""
        user = _new_key(nkeys.PREFIX_BYTE_USER)
        account = _new_key(nkeys.PREFIX_BYTE_ACCOUNT) if signed_by_stranger else self._account
        token = _jwt(
            account, _public(user), name, {**_UNLIMITED, "pub": {}, "sub": {}, "type": "user", "version": 2}
        )
        seed = bytes(user.seed).decode()
        path.write_text(
            f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        )
        path.chmod(0o600)
        return path
