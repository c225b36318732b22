"""The `pkcs11` key provider: KEKs generated and kept inside an HSM token.

One token per region, found by its label (`keys.pkcs11_token_label` with
`{region}` filled in), logged into with the user PIN. Each KEK version is an
AES-256 secret key generated *in* the token -- sensitive, not extractable, a
token object -- whose `CKA_ID` is `bastion-kek:<region>:<version>`. Keys are
looked up by that ID, never by label: labels are not unique, and a second key
under one label makes a label lookup fail. The region in the ID keeps two
regions' KEKs apart even if both labels pointed at one token by mistake.

Wrap and unwrap are `CKM_AES_GCM` encrypt/decrypt of the 32-byte DEK with a
random 96-bit nonce and the caller's AAD (`pkcs11.mechanisms.GCMParams`; a plain
tuple raises a bare `TypeError`). About 30 us per call on SoftHSM2, some 25x a
software AES-GCM call, so the keyring caches unwrapped DEKs and the HSM is never
called per field.

A PKCS#11 session runs one operation at a time, so each region's session is
used under a lock. Sessions are opened lazily and re-opened once when the token
reports them gone (HSM restart, network HSM failover). Every other PKCS#11
failure is `KeyServiceUnavailable` (503) for that region only. SoftHSM2 reports
a bad GCM tag as `CKR_GENERAL_ERROR` rather than `CKR_ENCRYPTED_DATA_INVALID`;
to tell that apart from a sick device, a failed unwrap probes the token (a
random-number call): if the token answers, the wrapped key was bad
(`DecryptionFailed`), otherwise the service is unavailable.

Creating the same KEK version from two processes at once could store two keys
under one ID; the keyring only creates versions under a database lock (first
use of a region, or the start of a KEK rotation), which serialises them.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pkcs11
import structlog
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams
from pkcs11.types import DecryptMixin, EncryptMixin
from pydantic import SecretStr

from bastion.crypto.errors import (
    DecryptionFailed,
    KeyConfigurationError,
    KeyDestroyed,
    KeyServiceUnavailable,
)
from bastion.crypto.providers import (
    WRAP_NONCE_BYTES,
    WRAP_TAG_BYTES,
    check_region,
    check_version,
    split_wrapped,
)

log = structlog.get_logger("bastion.crypto")
T = TypeVar("T")

_KEY_ID_PREFIX = "bastion-kek:"
# The session (or the token behind it) is gone: open a new one and retry once.
_STALE = (
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.DeviceRemoved,
    p11.TokenNotPresent,
    p11.UserNotLoggedIn,
    p11.ObjectHandleInvalid,
    p11.KeyHandleInvalid,
)
# What a failed GCM tag check looks like, depending on the token.
_BAD_CIPHERTEXT = (
    p11.EncryptedDataInvalid,
    p11.EncryptedDataLenRange,
    p11.GeneralError,
    p11.FunctionFailed,
)


def kek_object_id(region: str, version: int) -> bytes:
    """The `CKA_ID` of KEK `version` of `region`."""
    return f"{_KEY_ID_PREFIX}{region}:{version}".encode("ascii")


def _version_of(object_id: bytes, region: str) -> int | None:
    prefix = kek_object_id(region, 1)[:-1]
    if not object_id.startswith(prefix):
        return None
    tail = object_id[len(prefix) :]
    return int(tail) if tail.isdigit() and not tail.startswith(b"0") else None


class _RegionToken:
    """One region's session and cached KEK handles, used under `lock`."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.lock = threading.Lock()
        self.session: pkcs11.Session | None = None
        self.keys: dict[int, pkcs11.SecretKey] = {}

    def reset(self) -> None:
        session, self.session = self.session, None
        self.keys.clear()
        if session is not None:
            with contextlib.suppress(p11.PKCS11Error):  # already gone: best effort
                session.close()


class Pkcs11KeyProvider:
    """KEKs in an HSM token per region, via PKCS#11 (see the module docstring)."""

    name = "pkcs11"

    def __init__(self, *, module: str, token_label: str, pin: SecretStr) -> None:
        self._module = module
        self._token_label = token_label
        self._pin = pin
        self._tokens: dict[str, _RegionToken] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Pkcs11KeyProvider(module={self._module!r}, token_label={self._token_label!r})"

    def token_label(self, region: str) -> str:
        check_region(region)
        return self._token_label.format(region=region)

    # -- KeyProvider ---------------------------------------------------------------

    def versions(self, region: str) -> tuple[int, ...]:
        def find(session: pkcs11.Session) -> tuple[int, ...]:
            found: set[int] = set()
            query = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES}
            for obj in session.get_objects(query):
                version = _version_of(bytes(obj[Attribute.ID]), region)
                if version is not None:
                    found.add(version)
            return tuple(sorted(found))

        return self._run(region, find)

    def create_version(self, region: str, version: int) -> None:
        check_version(version)
        object_id = kek_object_id(region, version)

        def create(session: pkcs11.Session) -> bool:
            if any(True for _ in session.get_objects({Attribute.ID: object_id})):
                return False
            session.generate_key(
                KeyType.AES,
                256,
                id=object_id,
                label=f"bastion-kek-{region}-v{version}",
                store=True,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                },
            )
            return True

        if self._run(region, create):
            log.info("kek_created", provider=self.name, region=region, version=version)

    def destroy_version(self, region: str, version: int) -> None:
        check_version(version)
        object_id = kek_object_id(region, version)

        def destroy(session: pkcs11.Session) -> int:
            self._tokens[region].keys.pop(version, None)
            objects = list(session.get_objects({Attribute.ID: object_id}))
            for obj in objects:
                obj.destroy()
            return len(objects)

        if self._run(region, destroy):
            log.info("kek_destroyed", provider=self.name, region=region, version=version)

    def wrap(self, region: str, version: int, key: bytes, aad: bytes) -> bytes:
        check_version(version)
        nonce = os.urandom(WRAP_NONCE_BYTES)

        def encrypt(session: pkcs11.Session) -> bytes:
            kek = self._kek(session, region, version)
            assert isinstance(kek, EncryptMixin)
            sealed = kek.encrypt(
                key,
                mechanism=Mechanism.AES_GCM,
                mechanism_param=GCMParams(nonce, aad, WRAP_TAG_BYTES * 8),
            )
            assert isinstance(sealed, bytes)
            return sealed

        return nonce + self._run(region, encrypt)

    def unwrap(self, region: str, version: int, wrapped: bytes, aad: bytes) -> bytes:
        check_version(version)
        nonce, sealed = split_wrapped(region, version, wrapped)

        def decrypt(session: pkcs11.Session) -> bytes:
            kek = self._kek(session, region, version)
            assert isinstance(kek, DecryptMixin)
            try:
                plain = kek.decrypt(
                    sealed,
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(nonce, aad, WRAP_TAG_BYTES * 8),
                )
            except _BAD_CIPHERTEXT:
                session.generate_random(64)  # raises if the token itself is sick
                raise DecryptionFailed(
                    f"a wrapped key of region {region!r} failed its integrity check "
                    f"under KEK version {version}"
                ) from None
            assert isinstance(plain, bytes)
            return plain

        return self._run(region, decrypt)

    def close(self) -> None:
        with self._lock:
            tokens = list(self._tokens.values())
        for token in tokens:
            with token.lock:
                token.reset()

    # -- sessions ------------------------------------------------------------------

    def _kek(self, session: pkcs11.Session, region: str, version: int) -> pkcs11.SecretKey:
        token = self._tokens[region]
        kek = token.keys.get(version)
        if kek is None:
            try:
                found = session.get_key(
                    object_class=ObjectClass.SECRET_KEY,
                    key_type=KeyType.AES,
                    id=kek_object_id(region, version),
                )
            except p11.NoSuchKey:
                raise KeyDestroyed(
                    f"KEK version {version} of region {region!r} does not exist (destroyed?)"
                ) from None
            except p11.MultipleObjectsReturned:
                raise KeyConfigurationError(
                    f"the HSM token of region {region!r} holds several keys for KEK "
                    f"version {version}"
                ) from None
            assert isinstance(found, pkcs11.SecretKey)
            kek = token.keys[version] = found
        return kek

    def _region_token(self, region: str) -> _RegionToken:
        check_region(region)
        with self._lock:
            token = self._tokens.get(region)
            if token is None:
                token = self._tokens[region] = _RegionToken(region)
            return token

    def _open(self, region: str) -> pkcs11.Session:
        label = self.token_label(region)
        try:
            lib = pkcs11.lib(self._module)
            token = lib.get_token(token_label=label)
        except p11.NoSuchToken:
            raise self._unavailable(region, f"no HSM token labelled {label!r}") from None
        except p11.MultipleTokensReturned:
            raise KeyConfigurationError(f"several HSM tokens are labelled {label!r}") from None
        try:
            return token.open(rw=True, user_pin=self._pin.get_secret_value())
        except p11.UserAlreadyLoggedIn:
            # Login state is per application and token: another session of this
            # process (another keyring) has logged in already.
            return token.open(rw=True)
        except (p11.PinIncorrect, p11.PinLocked, p11.PinExpired, p11.PinInvalid):
            raise self._unavailable(region, f"login to HSM token {label!r} failed") from None

    def _run(self, region: str, operation: Callable[[pkcs11.Session], T]) -> T:
        """`operation` on the region's session, under its lock; PKCS#11 errors -> 503."""
        token = self._region_token(region)
        with token.lock:
            for attempt in (1, 2):
                try:
                    if token.session is None:
                        token.session = self._open(region)
                    return operation(token.session)
                except _STALE as exc:
                    token.reset()
                    if attempt == 2:
                        raise self._unavailable(region, None, exc) from None
                except p11.PKCS11Error as exc:
                    raise self._unavailable(region, None, exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _unavailable(
        self, region: str, detail: str | None, exc: Any = None
    ) -> KeyServiceUnavailable:
        # The class name only: never the PIN, and PKCS#11 messages carry nothing useful.
        cause = type(exc).__name__ if exc is not None else "configuration"
        log.warning("hsm_unavailable", region=region, cause=cause)
        return KeyServiceUnavailable(region, detail)
