"""Crypto fixtures: key providers (local files, and SoftHSM2 through PKCS#11) and keyrings.

SoftHSM2 tokens (`bastion-eu`, `bastion-us`) are made once per test session in a
temporary folder (`SOFTHSM2_CONF` points there) before the PKCS#11 library is
first loaded -- SoftHSM reads its token folder once, when it is initialised -- and
emptied of keys before each test. Without SoftHSM2 the pkcs11 cases skip, except
under BASTION_REQUIRE_SOFTHSM=1 (CI), where they fail.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from pkcs11 import TokenFlag
from pkcs11 import exceptions as p11
from pydantic import SecretStr

from bastion.crypto.datakeys import IN_FLIGHT_MARGIN
from bastion.crypto.keyring import Keyring
from bastion.crypto.providers import KeyProvider, build_provider
from bastion.crypto.settings import KeySettings
from bastion.residency.databases import Regions
from bastion.state import State
from tests.conftest import REGIONS, FrozenClock

REQUIRE_SOFTHSM = os.environ.get("BASTION_REQUIRE_SOFTHSM") == "1"
SOFTHSM_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
USER_PIN = "bastion-test-pin"
SO_PIN = "bastion-test-so-pin"


class Rollback(Exception):
    """Raised inside a test's transaction to roll it back (`with suppress(Rollback), ...`)."""


@dataclass(frozen=True)
class SoftHsm:
    module: str
    conf: Path

    def key_settings(self, **overrides: Any) -> KeySettings:
        return KeySettings(
            provider="pkcs11",
            pkcs11_module=self.module,
            pkcs11_pin=SecretStr(USER_PIN),
            **overrides,
        )

    def wipe(self) -> None:
        """Destroy every object in the test tokens (each test starts with no KEK)."""
        lib = pkcs11.lib(self.module)
        for region in REGIONS:
            token = lib.get_token(token_label=f"bastion-{region}")
            try:
                session = token.open(rw=True, user_pin=USER_PIN)
            except p11.UserAlreadyLoggedIn:
                session = token.open(rw=True)
            with session:
                for obj in list(session.get_objects()):
                    obj.destroy()
        self.log_out()

    # Probes of the token's own state, through SoftHSM2's exported C functions
    # (python-pkcs11 has no call for them). PKCS#11 login state belongs to the
    # process and token, not to one session: one C_Logout ends it for every session.

    def _cryptoki(self) -> ctypes.CDLL:
        cryptoki = ctypes.CDLL(self.module)
        cryptoki.C_Logout.argtypes = [ctypes.c_ulong]
        cryptoki.C_Logout.restype = ctypes.c_ulong
        cryptoki.C_GetSessionInfo.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
        cryptoki.C_GetSessionInfo.restype = ctypes.c_ulong
        return cryptoki

    def _token(self, region: str) -> pkcs11.Token:
        return pkcs11.lib(self.module).get_token(token_label=f"bastion-{region}")

    def log_out(self) -> None:
        """End this process's login to the test tokens (if it is logged in)."""
        cryptoki = self._cryptoki()
        for region in REGIONS:
            with self._token(region).open() as session:
                cryptoki.C_Logout(session.handle)  # CKR_USER_NOT_LOGGED_IN is fine too

    def log_in_and_out(self, region: str) -> None:
        """One successful login (SoftHSM2 then clears the token's USER_PIN_COUNT_LOW)."""
        with self._token(region).open(user_pin=USER_PIN):
            pass

    def failed_login_seen(self, region: str) -> bool:
        """Whether a login failed since the last good one (SoftHSM2's USER_PIN_COUNT_LOW)."""
        return TokenFlag.USER_PIN_COUNT_LOW in self._token(region).flags

    def probe_handle(self, region: str) -> int:
        """The handle of a session opened (and closed) now: SoftHSM2 counts them up."""
        with self._token(region).open() as session:
            return int(session.handle)

    def open_sessions(self, handles: range) -> int:
        """How many of these session handles are open in this process."""
        cryptoki = self._cryptoki()
        info = (ctypes.c_ulong * 4)()  # CK_SESSION_INFO: slot, state, flags, device error
        return sum(cryptoki.C_GetSessionInfo(h, ctypes.byref(info)) == 0 for h in handles)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    util = shutil.which("softhsm2-util")
    module = next((m for m in SOFTHSM_MODULES if Path(m).is_file()), None)
    if util is None or module is None:
        if REQUIRE_SOFTHSM:
            pytest.fail("SoftHSM2 is required (BASTION_REQUIRE_SOFTHSM=1) but is not installed")
        pytest.skip("SoftHSM2 is not installed (apt-get install softhsm2)")
    directory = tmp_path_factory.mktemp("softhsm")
    (directory / "tokens").mkdir()
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {directory / 'tokens'}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
    )
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pins = ["--so-pin", SO_PIN, "--pin", USER_PIN]
    try:
        for region in REGIONS:
            subprocess.run(
                [util, "--init-token", "--free", "--label", f"bastion-{region}", *pins],
                check=True,
                capture_output=True,
            )
        yield SoftHsm(module=module, conf=conf)
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture
def hsm(softhsm: SoftHsm) -> SoftHsm:
    """SoftHSM2 with empty tokens."""
    softhsm.wipe()
    return softhsm


@pytest.fixture(params=["local", "pkcs11"])
def key_settings(request: pytest.FixtureRequest) -> KeySettings:
    """Key settings for each provider: the provider suite runs against both."""
    if request.param == "local":
        return KeySettings()
    hsm: SoftHsm = request.getfixturevalue("hsm")
    return hsm.key_settings()


@pytest.fixture
def provider(key_settings: KeySettings, tmp_path: Path) -> Iterator[KeyProvider]:
    built = build_provider(key_settings, mode="development", home=tmp_path)
    yield built
    built.close()


KeyringFactory = Callable[..., Keyring]


@pytest.fixture
def make_keyring(state: State, clock: FrozenClock, tmp_path: Path) -> Iterator[KeyringFactory]:
    """Keyrings over the test's region databases; the local provider unless one is given."""
    made: list[Keyring] = []

    def make(
        *,
        provider: KeyProvider | None = None,
        regions: Regions | None = None,
        cache_size: int = 1000,
        cache_ttl: timedelta = timedelta(minutes=5),
        in_flight_margin: timedelta = IN_FLIGHT_MARGIN,
        blind_index_bits: int = 16,
    ) -> Keyring:
        keyring = Keyring(
            regions=regions or state.regions,
            provider=provider or build_provider(KeySettings(), mode="development", home=tmp_path),
            clock=clock,
            cache_size=cache_size,
            cache_ttl=cache_ttl,
            in_flight_margin=in_flight_margin,
            blind_index_bits=blind_index_bits,
        )
        made.append(keyring)
        return keyring

    yield make
    for keyring in made:
        keyring.close()  # idempotent: a test may have closed it already


@pytest.fixture
def keyring(make_keyring: KeyringFactory) -> Keyring:
    """A keyring with the local provider (file KEKs under the test's home)."""
    return make_keyring()


@pytest.fixture
def any_keyring(make_keyring: KeyringFactory, provider: KeyProvider) -> Keyring:
    """A keyring on each provider in turn (local, then SoftHSM2)."""
    return make_keyring(provider=provider)
