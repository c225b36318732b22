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

Logging in. A session is opened plain and then logged in (`bastion.crypto.cryptoki`
says why not with python-pkcs11's `Token.open(user_pin=...)`); every failure
closes the session it opened. A login the token refuses (wrong, expired or locked
PIN) is remembered: that region's token is not logged into again by this
provider -- a real HSM locks the PIN after a few failures -- and every call is
`KeyConfigurationError` (500: retrying cannot help) until the provider is rebuilt
with the right PIN (a restart). PKCS#11 login state belongs to the process and
token: a provider whose session joins a login the process holds already (another
provider's) shares it, and closing a provider closes its sessions without logging
out, so the others keep theirs.

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

from bastion.crypto import cryptoki
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
# The token refused the PIN: trying again cannot help, and may lock it.
_LOGIN_REFUSED = (
    p11.PinIncorrect,
    p11.PinInvalid,
    p11.PinLenRange,
    p11.PinExpired,
    p11.PinLocked,
    p11.UserPinNotInitialized,
)
# What a failed GCM tag check looks like, depending on the token.
_BAD_CIPHERTEXT = (
    p11.EncryptedDataInvalid,
    p11.EncryptedDataLenRange,
    p11.GeneralError,
    p11.FunctionFailed,
)


def _checked_bytes(value: object) -> bytes:
    """The token's output, which python-pkcs11 types loosely; anything else is a token fault."""
    if not isinstance(value, bytes):
        raise p11.PKCS11Error(f"the token returned {type(value).__name__}, not bytes")
    return value


def kek_object_id(region: str, version: int) -> bytes:
    """The `CKA_ID` of KEK `version` of `region`."""
    return f"{_KEY_ID_PREFIX}{region}:{version}".encode("ascii")


def _version_of(object_id: bytes, region: str) -> int | None:
    prefix = kek_object_id(region, 1)[:-1]
    if not object_id.startswith(prefix):
        return None
    tail = object_id[len(prefix) :]
    return int(tail) if tail.isdigit() and not tail.startswith(b"0") else None


def _close(session: pkcs11.Session) -> None:
    with contextlib.suppress(p11.PKCS11Error):  # already gone: best effort
        session.close()


class _RegionToken:
    """One region's session and cached KEK handles, used under `lock`.

    `refused` is the detail of the login the token refused, if it did: from then
    on the provider does not log in to it again.
    """

    def __init__(self, region: str) -> None:
        self.region = region
        self.lock = threading.Lock()
        self.session: pkcs11.Session | None = None
        self.keys: dict[int, pkcs11.SecretKey] = {}
        self.refused: str | None = None

    def reset(self) -> None:
        session, self.session = self.session, None
        self.keys.clear()
        if session is not None:
            _close(session)


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
            if not isinstance(kek, EncryptMixin):
                raise self._unusable(region, version, "encrypt")
            sealed = kek.encrypt(
                key,
                mechanism=Mechanism.AES_GCM,
                mechanism_param=GCMParams(nonce, aad, WRAP_TAG_BYTES * 8),
            )
            return _checked_bytes(sealed)

        return nonce + self._run(region, encrypt)

    def unwrap(self, region: str, version: int, wrapped: bytes, aad: bytes) -> bytes:
        check_version(version)
        nonce, sealed = split_wrapped(region, version, wrapped)

        def decrypt(session: pkcs11.Session) -> bytes:
            kek = self._kek(session, region, version)
            if not isinstance(kek, DecryptMixin):
                raise self._unusable(region, version, "decrypt")
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
            return _checked_bytes(plain)

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
            if not isinstance(found, pkcs11.SecretKey):
                raise self._unusable(region, version, "be used as a secret key")
            kek = token.keys[version] = found
        return kek

    def _unusable(self, region: str, version: int, what: str) -> KeyConfigurationError:
        # A key made by hand on the HSM, with the KEK's ID but not its capabilities.
        return KeyConfigurationError(
            f"KEK version {version} of region {region!r} in the HSM token cannot {what}: "
            "was it created by hand? Bastion creates KEKs with CKA_ENCRYPT and CKA_DECRYPT"
        )

    def _region_token(self, region: str) -> _RegionToken:
        check_region(region)
        with self._lock:
            token = self._tokens.get(region)
            if token is None:
                token = self._tokens[region] = _RegionToken(region)
            return token

    def _open(self, token: _RegionToken) -> pkcs11.Session:
        """A new session on the region's token, logged in; called under `token.lock`."""
        if token.refused is not None:
            raise KeyConfigurationError(token.refused)
        label = self.token_label(token.region)
        try:
            lib = pkcs11.lib(self._module)
            found = lib.get_token(token_label=label)
        except p11.NoSuchToken:
            raise self._unavailable(token.region, f"no HSM token labelled {label!r}") from None
        except p11.MultipleTokensReturned:
            raise KeyConfigurationError(f"several HSM tokens are labelled {label!r}") from None
        session = found.open(rw=True)
        try:
            cryptoki.login(self._module, session, self._pin.get_secret_value())
        except p11.UserAlreadyLoggedIn:
            pass  # The process is logged in (another provider's session): ours shares it.
        except _LOGIN_REFUSED as exc:
            _close(session)
            cause = type(exc).__name__
            token.refused = (
                f"the HSM token {label!r} refused the PIN ({cause}); not logging in again, "
                "as a real HSM locks the PIN after a few failures: fix keys.pkcs11_pin and "
                "restart"
            )
            log.error("hsm_login_refused", region=token.region, cause=cause)
            raise KeyConfigurationError(token.refused) from None
        except BaseException:
            _close(session)
            raise
        return session

    def _run(self, region: str, operation: Callable[[pkcs11.Session], T]) -> T:
        """`operation` on the region's session, under its lock; PKCS#11 errors -> 503."""
        token = self._region_token(region)
        with token.lock:
            for attempt in (1, 2):
                try:
                    if token.session is None:
                        token.session = self._open(token)
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
