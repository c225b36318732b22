"""Errors of the crypto domain, all `BastionError`s (rendered as problem+json).

None of them ever carries key material, a plaintext or a ciphertext: their
`detail` names regions, tables, fields, key ids and versions only. A key id is
random and reveals nothing about the key.
"""

from __future__ import annotations

from bastion.errors import BastionError, Conflict, ValidationFailed


class DecryptionFailed(BastionError):
    """A stored ciphertext or wrapped key failed its integrity check.

    Always a server-side condition (corruption, a value copied to another row,
    field, table or region, or a bug), never the client's fault: 500.
    """

    status = 500
    slug = "decryption-failed"
    title = "Decryption failed"


class MalformedCiphertext(DecryptionFailed):
    """The bytes are not a ciphertext Bastion wrote (wrong length, version or algorithm)."""

    slug = "malformed-ciphertext"
    title = "Malformed ciphertext"


class KeyDestroyed(BastionError):
    """The key needed to decrypt was destroyed (a shredded subject, a retired KEK).

    The data it protected is gone for good; 410 Gone says exactly that.
    """

    status = 410
    slug = "key-destroyed"
    title = "Key destroyed"


class KeyServiceUnavailable(BastionError):
    """The key provider (HSM, KMS, key files) cannot be reached: retry later."""

    status = 503
    slug = "key-service-unavailable"
    title = "Key service unavailable"

    def __init__(self, region: str, detail: str | None = None) -> None:
        super().__init__(detail or f"the key service for region {region!r} is unavailable")
        self.region = region


class KeyConfigurationError(BastionError):
    """The key settings are unusable (e.g. the local provider in production mode)."""

    status = 500
    slug = "key-configuration-error"
    title = "Key configuration error"


class KeyInUse(Conflict):
    """A key (version) was to be destroyed while data still depends on it."""

    slug = "key-in-use"
    title = "Key in use"


class UnindexableValue(ValidationFailed):
    """A value cannot be normalised for its blind index (e.g. not a phone number).

    The detail names the kind of value, never the value.
    """

    slug = "unindexable-value"
    title = "Value cannot be indexed"
