"""Who may use the page: accounts with roles, passwords hashed with scrypt, and the one-time
provisioning token that alone can create the first administrator.

Why no default password: a unit in a field cabinet with a well-known password is everyone's
unit.  Until an administrator exists, the page offers only "set up", and only to whoever holds
the token in ``DATA_DIR/web/provisioning-token`` (made at first start, printed on the label or
put there by provisioning); using it deletes it.  After that the administrator creates the
other accounts.

Why scrypt: it is memory-hard (each guess costs 16 MiB), in the standard library
(``hashlib.scrypt``, OpenSSL), and so on the unit without a new package.  The hash itself runs
through a :data:`~gridedge.web.hashing.Hasher`: in the running unit a child process
(gridedge.web.hashing says why), so the methods that hash return Deferreds; the rules (names,
roles, password length, the token) are checked before any hashing, and their refusals raise
:class:`AccountError` at once.  When the hash runs in this process (``inline_hash``, tests),
its 16 MiB must go back to the system after each hash, or a second login would leave them
resident: glibc serves the first such block with mmap but then raises its mmap threshold and
keeps later ones in the heap.  :func:`_return_big_blocks` pins the threshold at 1 MiB
(``mallopt``; the unit's C library is glibc; elsewhere it does nothing).

Roles: ``viewer`` sees everything; ``operator`` also acts (poll, relay, upload now, firmware
upload); ``admin`` also manages accounts.

Tests: tests/edge/test_web_parts.py, tests/web/test_web_browser.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from twisted.internet.defer import Deferred

from .files import read_json, write_json
from .hashing import Hasher, inline_hash

__all__ = ["ROLES", "Account", "AccountError", "Accounts"]

ROLES = ("viewer", "operator", "admin")
_RANK = {role: i for i, role in enumerate(ROLES)}
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{1,31}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 256


class AccountError(ValueError):
    """A refused account change; the message is fit to show on the page."""


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    role: str

    def may(self, role: str) -> bool:
        """True if this account has ``role`` or a higher one."""
        return _RANK[self.role] >= _RANK[role]


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


@functools.cache
def _return_big_blocks() -> bool:
    """Make glibc serve (and unmap on free) every block of 1 MiB or more; True if it could."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
        return bool(mallopt is not None and mallopt(_M_MMAP_THRESHOLD, 1 << 20) == 1)
    except OSError:
        return False


class Accounts:
    """The accounts file (``accounts.json``) and the provisioning token, both in ``folder``."""

    def __init__(self, folder: Path, hasher: Hasher = inline_hash) -> None:
        _return_big_blocks()
        self.hasher = hasher
        self.path = folder / "accounts.json"
        self.token_path = folder / "provisioning-token"
        self._accounts: dict[str, dict[str, str]] = read_json(self.path, {})

    # -- first administrator -------------------------------------------------------------

    @property
    def provisioned(self) -> bool:
        """True once an administrator exists."""
        return any(a["role"] == "admin" for a in self._accounts.values())

    def ensure_token(self) -> str | None:
        """The provisioning token, made now if the unit has no administrator and no token;
        None once provisioned."""
        if self.provisioned:
            return None
        try:
            token = self.token_path.read_text().strip()
        except FileNotFoundError:
            token = ""
        if not token:
            token = secrets.token_urlsafe(12)
            self.token_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
        return token

    def provision(self, token: str, name: str, password: str) -> Deferred[Account]:
        """Create the first administrator, if ``token`` is the one on /data; the token is then
        deleted."""
        if self.provisioned:
            raise AccountError("this unit already has an administrator")
        expected = self.ensure_token() or ""
        if not token or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise AccountError("wrong provisioning token")
        return self._add(name, password, "admin", first=True)

    # -- accounts ------------------------------------------------------------------------

    def create(self, name: str, password: str, role: str) -> Deferred[Account]:
        return self._add(name, password, role, first=False)

    def _add(self, name: str, password: str, role: str, *, first: bool) -> Deferred[Account]:
        self._check_new(name, role)
        self._check_password(password)
        salt = os.urandom(16)

        def hashed(digest: bytes) -> Account:
            # Checked again: another request may have got here while this one was hashing.
            if first and self.provisioned:
                raise AccountError("this unit already has an administrator")
            self._check_new(name, role)
            self._accounts[name] = {"role": role, "salt": salt.hex(), "hash": digest.hex()}
            self._save()
            if first:
                self.token_path.unlink(missing_ok=True)
            return Account(name, role)

        return self.hasher(password, salt).addCallback(hashed)

    def set_password(self, name: str, password: str) -> Deferred[None]:
        if name not in self._accounts:
            raise AccountError(f"no account {name}")
        self._check_password(password)
        salt = os.urandom(16)

        def hashed(digest: bytes) -> None:
            if name not in self._accounts:
                raise AccountError(f"no account {name}")
            self._accounts[name].update(salt=salt.hex(), hash=digest.hex())
            self._save()

        return self.hasher(password, salt).addCallback(hashed)

    def delete(self, name: str) -> None:
        if name not in self._accounts:
            raise AccountError(f"no account {name}")
        if self._accounts[name]["role"] == "admin" and sum(
                a["role"] == "admin" for a in self._accounts.values()) == 1:
            raise AccountError("the last administrator cannot be deleted")
        del self._accounts[name]
        self._save()

    def check(self, name: str, password: str) -> Deferred[Account | None]:
        """The account if ``password`` is right; None otherwise (same cost either way)."""
        entry = self._accounts.get(name)
        salt = bytes.fromhex(entry["salt"]) if entry else b"\0" * 16

        def compare(digest: bytes) -> Account | None:
            current = self._accounts.get(name)
            if entry is None or current is not entry or not hmac.compare_digest(
                    digest, bytes.fromhex(entry["hash"])):
                return None
            return Account(name, entry["role"])

        return self.hasher(password[:MAX_PASSWORD], salt).addCallback(compare)

    def get(self, name: str) -> Account | None:
        entry = self._accounts.get(name)
        return Account(name, entry["role"]) if entry else None

    def all(self) -> list[Account]:
        return [Account(n, a["role"]) for n, a in sorted(self._accounts.items())]

    def _check_new(self, name: str, role: str) -> None:
        if not _NAME.match(name):
            raise AccountError("a name is 2-32 characters: lower-case letters, digits, . _ -")
        if name in self._accounts:
            raise AccountError(f"account {name} exists already")
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")

    def _check_password(self, password: str) -> None:
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise AccountError(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters")

    def _save(self) -> None:
        write_json(self.path, self._accounts)
