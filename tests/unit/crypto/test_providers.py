"""The KeyProvider contract, checked against every provider (local files and SoftHSM2)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pkcs11
import pytest
import structlog
from pkcs11 import Attribute, KeyType, MechanismFlag
from pkcs11 import exceptions as p11
from pydantic import SecretStr

from bastion.crypto.errors import (
    DecryptionFailed,
    KeyConfigurationError,
    KeyDestroyed,
    KeyServiceUnavailable,
)
from bastion.crypto.hsm import Pkcs11KeyProvider, kek_object_id
from bastion.crypto.providers import KeyProvider, LocalKeyProvider, build_provider
from bastion.crypto.settings import KeySettings
from tests.unit.crypto.conftest import USER_PIN, SoftHsm

DEK = bytes(range(32))
AAD = b"bound-to-this-row"


def test_a_region_starts_with_no_kek(provider: KeyProvider) -> None:
    assert provider.versions("eu") == ()


def test_creating_a_version_is_idempotent(provider: KeyProvider) -> None:
    provider.create_version("eu", 1)
    wrapped = provider.wrap("eu", 1, DEK, AAD)
    provider.create_version("eu", 1)
    provider.create_version("eu", 2)
    assert provider.versions("eu") == (1, 2)
    assert provider.versions("us") == ()
    assert provider.unwrap("eu", 1, wrapped, AAD) == DEK  # v1 was not replaced


def test_wrap_then_unwrap_round_trips(provider: KeyProvider) -> None:
    provider.create_version("eu", 1)
    provider.create_version("eu", 2)
    for version in (1, 2):
        wrapped = provider.wrap("eu", version, DEK, AAD)
        assert DEK not in wrapped
        assert len(wrapped) == 12 + 32 + 16
        assert provider.unwrap("eu", version, wrapped, AAD) == DEK
    assert provider.wrap("eu", 1, DEK, AAD) != provider.wrap("eu", 1, DEK, AAD)


def test_another_aad_or_version_does_not_unwrap(provider: KeyProvider) -> None:
    provider.create_version("eu", 1)
    provider.create_version("eu", 2)
    wrapped = provider.wrap("eu", 1, DEK, AAD)
    with pytest.raises(DecryptionFailed):
        provider.unwrap("eu", 1, wrapped, b"bound-to-another-row")
    with pytest.raises(DecryptionFailed):
        provider.unwrap("eu", 2, wrapped, AAD)


def test_tampered_or_truncated_wrapped_keys_do_not_unwrap(provider: KeyProvider) -> None:
    provider.create_version("eu", 1)
    wrapped = provider.wrap("eu", 1, DEK, AAD)
    for position in (0, 11, 12, 30, len(wrapped) - 1):
        tampered = bytearray(wrapped)
        tampered[position] ^= 0x01
        with pytest.raises(DecryptionFailed):
            provider.unwrap("eu", 1, bytes(tampered), AAD)
    for length in (0, 12, 28, len(wrapped) - 1):
        with pytest.raises(DecryptionFailed):
            provider.unwrap("eu", 1, wrapped[:length], AAD)


def test_keks_are_per_region(provider: KeyProvider) -> None:
    provider.create_version("eu", 1)
    provider.create_version("us", 1)
    wrapped = provider.wrap("eu", 1, DEK, AAD)
    with pytest.raises(DecryptionFailed):
        provider.unwrap("us", 1, wrapped, AAD)
    assert provider.unwrap("eu", 1, wrapped, AAD) == DEK


def test_a_destroyed_version_is_gone_for_good(provider: KeyProvider) -> None:
    provider.create_version("eu", 1)
    provider.create_version("eu", 2)
    wrapped = provider.wrap("eu", 1, DEK, AAD)
    provider.destroy_version("eu", 1)
    provider.destroy_version("eu", 1)  # idempotent
    assert provider.versions("eu") == (2,)
    with pytest.raises(KeyDestroyed):
        provider.unwrap("eu", 1, wrapped, AAD)
    with pytest.raises(KeyDestroyed):
        provider.wrap("eu", 1, DEK, AAD)
    # Re-creating the number makes a *new* key: the old wrapping stays unreadable.
    provider.create_version("eu", 1)
    with pytest.raises(DecryptionFailed):
        provider.unwrap("eu", 1, wrapped, AAD)


def test_a_version_never_created_is_reported_as_destroyed(provider: KeyProvider) -> None:
    with pytest.raises(KeyDestroyed) as caught:
        provider.unwrap("eu", 7, os.urandom(60), AAD)
    assert caught.value.status == 410


@pytest.mark.parametrize("version", [0, -1, True])
def test_versions_are_positive_integers(provider: KeyProvider, version: int) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        provider.create_version("eu", version)


def test_region_names_are_checked(provider: KeyProvider) -> None:
    with pytest.raises(ValueError, match="region"):
        provider.create_version("../eu", 1)


def test_concurrent_threads_share_a_provider_safely(provider: KeyProvider) -> None:
    provider.create_version("eu", 1)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(40):
                aad = f"row-{threading.get_ident()}-{i}".encode()
                assert provider.unwrap("eu", 1, provider.wrap("eu", 1, DEK, aad), aad) == DEK
        except BaseException as exc:  # reported below; a thread cannot fail the test itself
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_no_key_material_in_reprs_errors_or_logs(
    provider: KeyProvider, key_settings: KeySettings, tmp_path: Path
) -> None:
    with structlog.testing.capture_logs() as logs:
        provider.create_version("eu", 1)
        wrapped = provider.wrap("eu", 1, DEK, AAD)
        errors: list[Exception] = []
        for bad in (wrapped[:-1] + b"\x00", wrapped[:5]):
            try:
                provider.unwrap("eu", 1, bad, AAD)
            except DecryptionFailed as exc:
                errors.append(exc)
        provider.destroy_version("eu", 1)
    secrets = [DEK.hex(), DEK.decode("latin-1"), USER_PIN]
    kek_file = tmp_path / "keys" / "eu" / "kek-v000001.key"
    texts = [repr(provider), str(provider), repr(key_settings), str(logs)]
    texts += [f"{e!r} {e}" for e in errors]
    for text in texts:
        for secret in secrets:
            assert secret not in text
    assert not kek_file.exists()
    assert len(errors) == 2


# --- local provider ------------------------------------------------------------------


def test_local_kek_files_are_private(tmp_path: Path) -> None:
    provider = LocalKeyProvider(tmp_path, mode="development")
    provider.create_version("eu", 1)
    path = tmp_path / "keys" / "eu" / "kek-v000001.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert path.stat().st_size == 32
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_local_provider_refuses_production_mode(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigurationError, match="production"):
        build_provider(KeySettings(), mode="production", home=tmp_path)
    with pytest.raises(KeyConfigurationError, match="production"):
        LocalKeyProvider(tmp_path, mode="production")


def test_local_provider_must_be_told_its_mode(tmp_path: Path) -> None:
    # No permissive default: a caller that forgets the mode must not get dev keys.
    with pytest.raises(TypeError, match="mode"):
        LocalKeyProvider(tmp_path)  # type: ignore[call-arg]
    with pytest.raises(KeyConfigurationError, match="mode"):
        LocalKeyProvider(tmp_path, mode="prod")


def test_a_kek_destroyed_by_another_process_stops_unwrapping_here_at_once(
    tmp_path: Path,
) -> None:
    # Two providers on one BASTION_HOME: a server, and `bastion keys retire-kek`.
    server = LocalKeyProvider(tmp_path, mode="development")
    cli = LocalKeyProvider(tmp_path, mode="development")
    server.create_version("eu", 1)
    server.create_version("eu", 2)
    wrapped = server.wrap("eu", 1, DEK, AAD)
    assert server.unwrap("eu", 1, wrapped, AAD) == DEK  # v1 is loaded in the server now
    cli.destroy_version("eu", 1)
    with pytest.raises(KeyDestroyed):
        server.unwrap("eu", 1, wrapped, AAD)
    with pytest.raises(KeyDestroyed):
        server.wrap("eu", 1, DEK, AAD)
    assert server.unwrap("eu", 2, server.wrap("eu", 2, DEK, AAD), AAD) == DEK
    # The number re-used by hand makes another key, which the server must load.
    cli.create_version("eu", 1)
    with pytest.raises(DecryptionFailed):
        server.unwrap("eu", 1, wrapped, AAD)
    assert cli.unwrap("eu", 1, server.wrap("eu", 1, DEK, AAD), AAD) == DEK


def test_local_provider_refuses_a_kek_file_others_can_read(tmp_path: Path) -> None:
    LocalKeyProvider(tmp_path, mode="development").create_version("eu", 1)
    (tmp_path / "keys" / "eu" / "kek-v000001.key").chmod(0o644)
    fresh = LocalKeyProvider(tmp_path, mode="development")
    with pytest.raises(KeyConfigurationError, match="chmod 600"):
        fresh.wrap("eu", 1, DEK, AAD)


def test_local_provider_warns_loudly_when_it_creates_a_kek(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        LocalKeyProvider(tmp_path, mode="development").create_version("eu", 1)
    assert [e["event"] for e in logs] == ["development_kek_created"]
    assert logs[0]["log_level"] == "warning"


# --- PKCS#11 provider ----------------------------------------------------------------


def _token_key(hsm: SoftHsm, region: str, version: int) -> dict[Attribute, object]:
    lib = pkcs11.lib(hsm.module)
    token = lib.get_token(token_label=f"bastion-{region}")
    try:
        session = token.open(user_pin=USER_PIN)
    except p11.UserAlreadyLoggedIn:
        session = token.open()
    with session:
        key = session.get_key(id=kek_object_id(region, version))
        attributes = key.get_attributes(
            [Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.TOKEN, Attribute.VALUE_LEN]
        )
        with pytest.raises(p11.AttributeSensitive):
            _ = key[Attribute.VALUE]
        return attributes


def test_hsm_keks_are_sensitive_non_extractable_token_keys(hsm: SoftHsm) -> None:
    provider = build_provider(hsm.key_settings(), mode="production", home=Path("/nonexistent"))
    try:
        provider.create_version("eu", 1)
        attributes = _token_key(hsm, "eu", 1)
    finally:
        provider.close()
    assert attributes[Attribute.SENSITIVE] is True
    assert attributes[Attribute.EXTRACTABLE] is False
    assert attributes[Attribute.TOKEN] is True
    assert attributes[Attribute.VALUE_LEN] == 32


def test_hsm_provider_is_allowed_in_production(hsm: SoftHsm) -> None:
    provider = build_provider(hsm.key_settings(), mode="production", home=Path("/nonexistent"))
    assert isinstance(provider, Pkcs11KeyProvider)
    provider.close()


def test_an_unknown_token_is_unavailable_not_a_crash(hsm: SoftHsm) -> None:
    provider = build_provider(
        hsm.key_settings(pkcs11_token_label="nobody-{region}"), mode="development", home=Path()
    )
    with pytest.raises(KeyServiceUnavailable) as caught:
        provider.versions("eu")
    assert caught.value.status == 503
    assert "nobody-eu" in caught.value.detail


def test_a_missing_module_is_unavailable(hsm: SoftHsm) -> None:
    provider = Pkcs11KeyProvider(
        module="/nonexistent/libpkcs11.so", token_label="bastion-{region}", pin=SecretStr("x")
    )
    with pytest.raises(KeyServiceUnavailable):
        provider.versions("eu")


def test_a_session_lost_under_the_provider_is_reopened(hsm: SoftHsm) -> None:
    provider = build_provider(hsm.key_settings(), mode="development", home=Path())
    try:
        provider.create_version("eu", 1)
        wrapped = provider.wrap("eu", 1, DEK, AAD)
        assert isinstance(provider, Pkcs11KeyProvider)
        # What an HSM restart looks like from here: the session handle is gone.
        session = provider._tokens["eu"].session
        assert session is not None
        session.close()
        assert provider.unwrap("eu", 1, wrapped, AAD) == DEK
    finally:
        provider.close()


@pytest.mark.parametrize("missing", ["pkcs11_module", "pkcs11_pin"])
def test_pkcs11_settings_must_be_complete(missing: str) -> None:
    values = {"provider": "pkcs11", "pkcs11_module": "/x.so", "pkcs11_pin": "1234"}
    del values[missing]
    with pytest.raises(KeyConfigurationError, match=missing):
        build_provider(KeySettings.model_validate(values), mode="production", home=Path())


def test_a_wrong_pin_is_tried_once_and_leaves_no_session_open(hsm: SoftHsm) -> None:
    provider = Pkcs11KeyProvider(
        module=hsm.module, token_label="bastion-{region}", pin=SecretStr("not-the-pin")
    )
    hsm.log_in_and_out("eu")
    assert not hsm.failed_login_seen("eu")
    first = hsm.probe_handle("eu")
    try:
        with pytest.raises(KeyConfigurationError, match="PIN") as caught:
            provider.versions("eu")
        assert caught.value.status == 500  # retrying cannot help: not a 503
        assert hsm.failed_login_seen("eu")  # the token saw one failed login...
        hsm.log_in_and_out("eu")  # (which clears the token's flag again)
        calls = [
            lambda: provider.versions("eu"),
            lambda: provider.create_version("eu", 1),
            lambda: provider.wrap("eu", 1, DEK, AAD),
            lambda: provider.unwrap("eu", 1, bytes(60), AAD),
            lambda: provider.destroy_version("eu", 1),
        ]
        for call in calls * 3:
            with pytest.raises(KeyConfigurationError, match="PIN"):
                call()
        assert not hsm.failed_login_seen("eu")  # ...and no other one: a real HSM would lock
        last = hsm.probe_handle("eu")
        assert last > first + 1  # the provider did open sessions in between
        assert hsm.open_sessions(range(first + 1, last)) == 0
    finally:
        provider.close()
    with pytest.raises(KeyConfigurationError, match="PIN"):
        provider.versions("eu")  # closing is not rebuilding: still no new attempt
    assert not hsm.failed_login_seen("eu")
    rebuilt = build_provider(hsm.key_settings(), mode="development", home=Path())
    try:
        assert rebuilt.versions("eu") == ()
    finally:
        rebuilt.close()


def test_a_provider_joining_a_login_leaves_no_extra_session_open(hsm: SoftHsm) -> None:
    first = hsm.probe_handle("eu")
    token = pkcs11.lib(hsm.module).get_token(token_label="bastion-eu")
    with token.open(user_pin=USER_PIN) as held:  # the process is logged in already
        provider = build_provider(hsm.key_settings(), mode="development", home=Path())
        try:
            provider.create_version("eu", 1)
            assert provider.versions("eu") == (1,)
        finally:
            provider.close()
        last = hsm.probe_handle("eu")
        assert hsm.open_sessions(range(first + 1, last)) == 1  # only `held`
        assert hsm.open_sessions(range(held.handle, held.handle + 1)) == 1


def test_closing_one_provider_does_not_log_out_another(hsm: SoftHsm) -> None:
    one = build_provider(hsm.key_settings(), mode="development", home=Path())
    other = build_provider(hsm.key_settings(), mode="development", home=Path())
    try:
        one.create_version("eu", 1)
        assert other.versions("eu") == (1,)
        one.close()
        # Private objects are invisible to a session that is not logged in: had
        # closing `one` logged the process out, `other` would see no KEK at all.
        assert other.versions("eu") == (1,)
    finally:
        one.close()
        other.close()


def test_a_kek_made_by_hand_that_cannot_encrypt_is_a_configuration_error(hsm: SoftHsm) -> None:
    token = pkcs11.lib(hsm.module).get_token(token_label="bastion-eu")
    with token.open(rw=True, user_pin=USER_PIN) as session:
        session.generate_key(
            KeyType.AES,
            256,
            id=kek_object_id("eu", 1),
            store=True,
            capabilities=MechanismFlag.DECRYPT,
            template={Attribute.TOKEN: True, Attribute.PRIVATE: True},
        )
    provider = build_provider(hsm.key_settings(), mode="development", home=Path())
    try:
        assert provider.versions("eu") == (1,)
        with pytest.raises(KeyConfigurationError, match="cannot encrypt") as caught:
            provider.wrap("eu", 1, DEK, AAD)
        assert caught.value.status == 500
    finally:
        provider.close()


def test_crypto_code_has_no_asserts_that_python_o_would_strip() -> None:
    import ast

    import bastion.crypto

    package = Path(bastion.crypto.__file__).parent
    found = [
        f"{path.name}:{node.lineno}"
        for path in sorted(package.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert found == []
