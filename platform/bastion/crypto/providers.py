"""Key providers: where each region's key-encryption keys (KEKs) live.

A KEK never leaves its provider as far as the rest of Bastion is concerned: the
keyring asks the provider to wrap (encrypt) and unwrap (decrypt) 32-byte keys
under a named *version* of a region's KEK. Versions are numbered 1, 2, ... per
region; the highest one wraps new keys, older ones only unwrap until a KEK
rotation has re-wrapped everything they protected and they are destroyed.

Every provider wraps with AES-256-GCM, the same layout: nonce (12) | ciphertext |
tag (16), with the caller's AAD binding the wrapped key to its row and region.

Contract of every provider (the shared test suite checks it):
- `unwrap` raises `DecryptionFailed` when the wrapped bytes or the AAD do not
  match, `KeyDestroyed` when the KEK version does not exist (never created, or
  destroyed), `KeyServiceUnavailable` when the provider cannot be reached;
- KEKs are per region: a key wrapped for one region never unwraps in another;
- no key material in any repr, str, log event or exception.

Providers: `local` (files, development only) here, `pkcs11` (an HSM) in
`bastion.crypto.hsm`.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bastion.crypto.errors import (
    DecryptionFailed,
    KeyConfigurationError,
    KeyDestroyed,
    KeyServiceUnavailable,
)
from bastion.crypto.settings import KeySettings
from bastion.residency.ids import is_valid_region_name

log = structlog.get_logger("bastion.crypto")

KEK_BYTES = 32
WRAP_NONCE_BYTES = 12
WRAP_TAG_BYTES = 16
MODES = ("development", "production")  # bastion.config.Mode


class KeyProvider(Protocol):
    """Versioned KEKs per region, and wrapping under them. See the module docstring."""

    @property
    def name(self) -> str:
        """The provider's name, as the settings say it (`local`, `pkcs11`)."""

    def versions(self, region: str) -> tuple[int, ...]:
        """The region's existing KEK versions, ascending (empty if it has none)."""

    def create_version(self, region: str, version: int) -> None:
        """Create KEK `version` for `region` unless it exists (idempotent, race-safe)."""

    def destroy_version(self, region: str, version: int) -> None:
        """Destroy KEK `version` for good (a no-op if it is already gone)."""

    def wrap(self, region: str, version: int, key: bytes, aad: bytes) -> bytes:
        """Encrypt `key` under the region's KEK `version`, bound to `aad`."""

    def unwrap(self, region: str, version: int, wrapped: bytes, aad: bytes) -> bytes:
        """Inverse of `wrap`; raises as described in the module docstring."""

    def close(self) -> None:
        """Release sessions and forget cached key handles."""


def check_version(version: int) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError("a KEK version is a positive integer")


def check_region(region: str) -> None:
    if not isinstance(region, str) or not is_valid_region_name(region):
        raise ValueError("not a valid region name")


def split_wrapped(region: str, version: int, wrapped: bytes) -> tuple[bytes, bytes]:
    """(nonce, ciphertext+tag) of a wrapped key; `DecryptionFailed` if it cannot be one."""
    if len(wrapped) < WRAP_NONCE_BYTES + WRAP_TAG_BYTES + 1:
        raise DecryptionFailed(
            f"a wrapped key of region {region!r} (KEK version {version}) is truncated"
        )
    return bytes(wrapped[:WRAP_NONCE_BYTES]), bytes(wrapped[WRAP_NONCE_BYTES:])


class LocalKeyProvider:
    """KEKs as 32-byte files `<home>/keys/<region>/kek-v<version>.key`, mode 0600.

    For development and tests only: a file on the application host is not a root
    of trust, and deleting a file is not a guaranteed erasure on journalling file
    systems and SSDs (destroy overwrites it first, best effort). `mode` (the
    settings' mode) is required, so nothing gets file KEKs by default; production
    mode is refused.

    Loaded KEKs are kept in memory, but every wrap and unwrap first checks (one
    `stat`) that the file is still the one loaded: a version another process
    destroyed (`bastion keys retire-kek`) is `KeyDestroyed` here at once, and a
    version number re-used for a new file loads the new key.
    """

    name = "local"
    _FILE_RE = re.compile(r"kek-v(\d{6})\.key")

    def __init__(self, home: Path, *, mode: str) -> None:
        if mode == "production":
            raise KeyConfigurationError(
                "the local key provider keeps KEKs in plain files and is refused in "
                'production mode; configure keys.provider = "pkcs11" (an HSM)'
            )
        if mode not in MODES:
            raise KeyConfigurationError(f"unknown mode {mode!r}; expected one of {MODES}")
        self._root = Path(home) / "keys"
        self._aeads: dict[tuple[str, int], _LoadedKek] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalKeyProvider(root={str(self._root)!r})"

    def _dir(self, region: str) -> Path:
        check_region(region)
        return self._root / region

    def _path(self, region: str, version: int) -> Path:
        check_version(version)
        return self._dir(region) / f"kek-v{version:06d}.key"

    def versions(self, region: str) -> tuple[int, ...]:
        directory = self._dir(region)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return ()
        except OSError as exc:
            raise self._unavailable(region, exc) from None
        found = (self._FILE_RE.fullmatch(name) for name in names)
        return tuple(sorted(int(m.group(1)) for m in found if m is not None))

    def create_version(self, region: str, version: int) -> None:
        path = self._path(region, version)
        if path.exists():
            return
        try:
            self._make_dirs(path.parent)
            # Write a temporary file, then hard-link it into place: the link fails if
            # another process won the race, and nobody ever reads a half-written KEK.
            temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(os.urandom(KEK_BYTES))
                    handle.flush()
                    os.fsync(handle.fileno())
                try:
                    os.link(temporary, path)
                except FileExistsError:
                    return
            finally:
                temporary.unlink(missing_ok=True)
            self._fsync_dir(path.parent)
        except OSError as exc:
            raise self._unavailable(region, exc) from None
        log.warning(
            "development_kek_created",
            detail="a KEK was generated in a local file; use an HSM (keys.provider = pkcs11) "
            "for real data",
            region=region,
            version=version,
            path=str(path),
        )

    def destroy_version(self, region: str, version: int) -> None:
        path = self._path(region, version)
        with self._lock:
            self._aeads.pop((region, version), None)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._unavailable(region, exc) from None
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(bytes(KEK_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
            path.unlink()
            self._fsync_dir(path.parent)
        except OSError as exc:
            raise self._unavailable(region, exc) from None
        log.info("kek_destroyed", provider=self.name, region=region, version=version)

    def wrap(self, region: str, version: int, key: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(WRAP_NONCE_BYTES)
        return nonce + self._aead(region, version).encrypt(nonce, key, aad)

    def unwrap(self, region: str, version: int, wrapped: bytes, aad: bytes) -> bytes:
        nonce, sealed = split_wrapped(region, version, wrapped)
        try:
            return self._aead(region, version).decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise DecryptionFailed(
                f"a wrapped key of region {region!r} failed its integrity check "
                f"under KEK version {version}"
            ) from None

    def close(self) -> None:
        with self._lock:
            self._aeads.clear()

    def _aead(self, region: str, version: int) -> AESGCM:
        loaded = self._aeads.get((region, version))
        if loaded is not None:
            # Another process may have destroyed (or replaced) the file since it was
            # loaded: a retired KEK must stop working everywhere, not at the next restart.
            try:
                current = _FileIdentity.of(os.stat(loaded.path, follow_symlinks=False))
            except FileNotFoundError:
                current = None
            except OSError as exc:
                raise self._unavailable(region, exc) from None
            if current == loaded.identity:
                return loaded.aead
            with self._lock:
                if self._aeads.get((region, version)) is loaded:
                    del self._aeads[(region, version)]
        path = self._path(region, version)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise KeyDestroyed(
                f"KEK version {version} of region {region!r} does not exist (destroyed?)"
            ) from None
        except OSError as exc:
            raise self._unavailable(region, exc) from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyConfigurationError(
                    f"the KEK file {path} is readable by other users; chmod 600 it"
                )
            material = handle.read(KEK_BYTES + 1)
        if len(material) != KEK_BYTES:
            raise KeyConfigurationError(f"the KEK file {path} is not a {KEK_BYTES}-byte key")
        if not any(material):
            # `destroy_version` zeroes the file before unlinking it: caught in between.
            raise KeyDestroyed(f"KEK version {version} of region {region!r} is being destroyed")
        aead = AESGCM(material)
        with self._lock:
            self._aeads[(region, version)] = _LoadedKek(aead, _FileIdentity.of(info), str(path))
        return aead

    def _make_dirs(self, directory: Path) -> None:
        for path in (self._root, directory):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _unavailable(self, region: str, exc: OSError) -> KeyServiceUnavailable:
        # errno name only: an OS message may quote paths, never keys, but stay terse.
        log.warning("key_files_unavailable", region=region, cause=type(exc).__name__)
        return KeyServiceUnavailable(region)


@dataclass(frozen=True, slots=True)
class _FileIdentity:
    """Which file a path named when a KEK was loaded: a file written, replaced or
    re-created since differs in inode or in its modification or change time."""

    device: int
    inode: int
    size: int
    modified_ns: int
    changed_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> _FileIdentity:
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class _LoadedKek:
    aead: AESGCM = field(repr=False)
    identity: _FileIdentity
    path: str  # checked before each use (a str: no Path built per wrap)


def build_provider(settings: KeySettings, *, mode: str, home: Path) -> KeyProvider:
    """The provider the settings name. Raises `KeyConfigurationError` when unusable."""
    if settings.provider == "local":
        return LocalKeyProvider(home, mode=mode)
    from bastion.crypto.hsm import Pkcs11KeyProvider

    if not settings.pkcs11_module:
        raise KeyConfigurationError("keys.pkcs11_module (the HSM's PKCS#11 library) is required")
    if settings.pkcs11_pin is None:
        raise KeyConfigurationError("keys.pkcs11_pin (the token user PIN) is required")
    return Pkcs11KeyProvider(
        module=settings.pkcs11_module,
        token_label=settings.pkcs11_token_label,
        pin=settings.pkcs11_pin,
    )
