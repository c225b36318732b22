"""Ed25519 checkpoint signing keys, one per chain, kept in files outside the databases.

Only a signature by a key the database does not hold catches someone who can
rewrite the database (a DBA, a stolen backup restored and edited): they can
recompute every SHA-256 of the chain, but not sign a checkpoint for it.

Layout of `AuditSettings.signing_key_dir` (default `<BASTION_HOME>/audit-keys`):

* `<chain>.ed25519` — the private key, PKCS#8 PEM, mode 0600 (a key file the group
  or other users may access is refused, as the KEK files are);
* `<chain>.<key id hex>.pub` — its verifier key (see `notes.verifier_key`), one
  file per key ever used, so checkpoints signed before a rotation still verify.
  To rotate, move the private key away and run `bastion audit keygen`.

In development mode a missing key is created on first use; in production mode
it is an error (`AuditKeyError`) naming the file and `bastion audit keygen`.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from bastion.audit.notes import NoteError, key_id, parse_verifier_key, verifier_key


class AuditKeyError(Exception):
    """A signing key is missing or unreadable; the message names the file, never key bytes."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The private key of one chain, with the name it signs under."""

    name: str
    private: Ed25519PrivateKey

    @property
    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_bytes)

    @property
    def verifier_key(self) -> str:
        return verifier_key(self.name, self.public_bytes)

    def sign(self, body: bytes) -> bytes:
        return self.private.sign(body)

    def __repr__(self) -> str:
        return f"SigningKey(name={self.name!r}, key_id={self.key_id.hex()})"


class KeyRing:
    """The signing keys of every chain of one deployment."""

    def __init__(self, directory: Path, *, origin: str, create_missing: bool) -> None:
        self.directory = directory
        self.origin = origin
        self._create_missing = create_missing
        self._keys: dict[str, SigningKey] = {}
        self._lock = threading.Lock()

    @property
    def creates_missing(self) -> bool:
        return self._create_missing

    def key_name(self, chain: str) -> str:
        """The name a chain's checkpoints are signed under, also their origin line."""
        return f"{self.origin}/{chain}"

    def signing_key(self, chain: str) -> SigningKey:
        """The chain's key, loaded once; created first in development mode."""
        with self._lock:
            key = self._keys.get(chain)
            if key is None:
                key = self._load(chain, create=self._create_missing)[0]
                self._keys[chain] = key
            return key

    def generate(self, chain: str) -> tuple[SigningKey, bool]:
        """The chain's key, creating it if missing: (key, whether it was created)."""
        with self._lock:
            key, created = self._load(chain, create=True)
            self._keys[chain] = key
            return key, created

    def verifiers(self, chain: str) -> dict[bytes, Ed25519PublicKey]:
        """Every public key of the chain by key id: the current one and archived ones."""
        found: dict[bytes, Ed25519PublicKey] = {}
        name = self.key_name(chain)
        if self.directory.is_dir():
            for path in sorted(self.directory.glob(f"{chain}.*.pub")):
                try:
                    key_name, kid, public = parse_verifier_key(path.read_text(encoding="ascii"))
                except (NoteError, OSError, UnicodeDecodeError):
                    continue  # not ours or damaged; a checkpoint it signed reports an unknown key
                if key_name == name:
                    found[kid] = public
        try:
            current = self.signing_key(chain)
        except AuditKeyError:
            return found
        found[current.key_id] = current.private.public_key()
        return found

    def _load(self, chain: str, *, create: bool) -> tuple[SigningKey, bool]:
        path = self.directory / f"{chain}.ed25519"
        name = self.key_name(chain)
        if path.exists():
            pem = _read_private(path)
            try:
                private = serialization.load_pem_private_key(pem, password=None)
            except (ValueError, TypeError):
                raise AuditKeyError(f"the audit signing key {path} is unreadable") from None
            if not isinstance(private, Ed25519PrivateKey):
                raise AuditKeyError(f"the audit signing key {path} is not an Ed25519 key")
            key = SigningKey(name, private)
            self._publish(chain, key)
            return key, False
        if not create:
            raise AuditKeyError(
                f"the audit signing key for chain {chain!r} is missing ({path}); "
                "create it with `bastion audit keygen` (production mode never creates keys)"
            )
        key = SigningKey(name, Ed25519PrivateKey.generate())
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = key.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # O_EXCL: two processes starting at once must not both write a key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return self._load(chain, create=False)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        self._publish(chain, key)
        return key, True

    def _publish(self, chain: str, key: SigningKey) -> None:
        path = self.directory / f"{chain}.{key.key_id.hex()}.pub"
        if not path.exists():
            path.write_text(key.verifier_key + "\n", encoding="ascii")


def _read_private(path: Path) -> bytes:
    """The key file's bytes; `AuditKeyError` if it is unreadable or others may read it.

    Like the KEK files: a private key readable by the group or by other users of
    the host is a key that may already be elsewhere, so it is refused, not used.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        raise AuditKeyError(f"the audit signing key {path} is unreadable") from None
    with os.fdopen(fd, "rb") as handle:
        if os.fstat(handle.fileno()).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuditKeyError(
                f"the audit signing key {path} is accessible to other users; chmod 600 it"
            )
        try:
            return handle.read()
        except OSError:
            raise AuditKeyError(f"the audit signing key {path} is unreadable") from None
