"""Key settings: the `[keys]` table of bastion.toml and `BASTION_KEYS_*` variables."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class KeySettings(BaseModel):
    """Which KeyProvider holds each region's key-encryption keys, and the DEK cache.

    `local` keeps KEKs in files under BASTION_HOME (development and tests; refused in
    production mode). `pkcs11` keeps them in an HSM token per region, found by the
    label `pkcs11_token_label` with `{region}` replaced by the region name, through
    the vendor's PKCS#11 library `pkcs11_module`, logged into with `pkcs11_pin`.

    `cache_size` unwrapped DEKs are kept per process for at most `cache_ttl_seconds`
    (0 disables the cache). The TTL also bounds how long *another* process may keep
    decrypting with a DEK after a shred, and sealing under a DEK version after
    `rotate_dek` (so `retire_dek` waits it out): every process must use the same
    value. `blind_index_bits` is the length of blind
    indexes (see `bastion.crypto.blindindex` for how to choose it); changing it
    after data was written means recomputing every index.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Literal["local", "pkcs11"] = "local"
    pkcs11_module: str | None = None
    pkcs11_token_label: str = "bastion-{region}"  # noqa: S105 - a label, not a secret
    pkcs11_pin: SecretStr | None = None
    cache_size: int = Field(default=10_000, ge=0, le=10_000_000)
    cache_ttl_seconds: int = Field(default=300, ge=0, le=86_400)
    blind_index_bits: int = Field(default=16, ge=8, le=32)
