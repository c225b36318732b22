"""`python -m benchmarks.crypto`: the cost of Bastion's field encryption primitives.

Each section measures a baseline and Bastion's operations in the same run and
prints per-operation times and their ratio to the baseline (ratios travel between
machines, absolute times do not):

- field encryption: `seal` + `unseal` of a 32-byte value against raw `AESGCM`
  encrypt + decrypt of the same bytes (same reused cipher object, a fresh
  `os.urandom` nonce per call, as any correct use needs). Goal: <= 2.5x;
- data key unwrap: the local provider against PKCS#11 on SoftHSM2 (a token made
  for the run in a temporary folder; skipped with a note without softhsm2-util),
  and the keyring's `dek_by_id` on a SQLite region database, cache hit and miss;
- blind index: a one-shot HMAC-SHA256 against Bastion's truncated per-field index,
  with and without normalisation.

Options: `--repeat` (timing runs per operation, the best counts; default 5) and
`--scale` (multiplies the iterations; default 1.0, about 20 s in all).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import shutil
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

SOFTHSM_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
PIN = "bench-pin-1234"
PINS = ("--so-pin", "bench-so-pin", "--pin", PIN)
TOKEN_LABEL = "bastion-{region}"  # noqa: S105 - a label, not a secret
FIELD = b"anna.schmidt@example-mail.com.de"  # 32 bytes, a typical email
assert len(FIELD) == 32


@dataclass(frozen=True, slots=True)
class Row:
    section: str
    name: str
    seconds: float
    baseline: bool = False


def per_call(function: Callable[[], object], number: int, repeat: int) -> float:
    """Best-of-`repeat` seconds per call."""
    function()  # warm caches and lazy initialisation
    return min(timeit.repeat(function, number=number, repeat=repeat)) / number


def interleaved(
    cases: list[tuple[str, Callable[[], object]]], number: int, repeat: int
) -> dict[str, float]:
    """Best-of-`repeat` seconds per call of each case, the cases taking turns in every
    round so that a noisy neighbour slows all of them alike, not just one."""
    for _, function in cases:
        function()
    best = {name: float("inf") for name, _ in cases}
    for _ in range(repeat):
        for name, function in cases:
            best[name] = min(best[name], timeit.timeit(function, number=number) / number)
    return best


@contextmanager
def softhsm_token() -> Iterator[str | None]:
    """A SoftHSM2 token `bastion-eu` in a temporary folder; its module path, or None."""
    util = shutil.which("softhsm2-util")
    module = next((m for m in SOFTHSM_MODULES if Path(m).is_file()), None)
    if util is None or module is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="bastion-bench-hsm-") as directory:
        tokens = Path(directory) / "tokens"
        tokens.mkdir()
        conf = Path(directory) / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {tokens}\nlog.level = ERROR\n")
        # Before the PKCS#11 library is first loaded: SoftHSM reads this once.
        os.environ["SOFTHSM2_CONF"] = str(conf)
        subprocess.run(
            [util, "--init-token", "--free", "--label", "bastion-eu", *PINS],
            check=True,
            capture_output=True,
        )
        yield module


def bench_fields(number: int, repeat: int) -> list[Row]:
    from bastion.crypto.envelope import DataKey, FieldContext, new_key_id, seal, unseal

    material = os.urandom(32)
    aead = AESGCM(material)
    key = DataKey(key_id=new_key_id(), region="eu", subject_id="s", version=1, material=material)
    record = "con_eu_01m86dzpzyehmvcb1s3m40n3bk"
    ctx = FieldContext("eu", "contacts", record, "email")

    def raw() -> None:
        nonce = os.urandom(12)
        aead.decrypt(nonce, aead.encrypt(nonce, FIELD, None), None)

    def raw_new_cipher() -> None:
        nonce = os.urandom(12)
        AESGCM(material).decrypt(nonce, AESGCM(material).encrypt(nonce, FIELD, None), None)

    def envelope() -> None:
        unseal(key, seal(key, FIELD, ctx), ctx)

    def envelope_with_context() -> None:
        place = FieldContext("eu", "contacts", record, "email")
        unseal(key, seal(key, FIELD, place), place)

    section = "field encryption (32 B)"
    cases: list[tuple[str, Callable[[], object]]] = [
        ("raw AESGCM encrypt+decrypt", raw),
        ("seal+unseal", envelope),
        ("seal+unseal, FieldContext per field", envelope_with_context),
        ("raw, new AESGCM(key) per call", raw_new_cipher),
    ]
    best = interleaved(cases, number // 5, repeat * 5)
    return [Row(section, name, best[name], index == 0) for index, (name, _) in enumerate(cases)]


def bench_unwrap(number: int, repeat: int, module: str | None, home: Path) -> list[Row]:
    from bastion.crypto import aad
    from bastion.crypto.providers import KeyProvider, LocalKeyProvider

    section = "DEK unwrap"
    binding = aad.dek_wrap("eu", "con_eu_x", os.urandom(16), 1, 1)
    dek = os.urandom(32)
    local = LocalKeyProvider(home, mode="development")
    providers: list[tuple[str, KeyProvider]] = [("local provider", local)]
    if module is not None:
        from bastion.crypto.hsm import Pkcs11KeyProvider

        hsm = Pkcs11KeyProvider(module=module, token_label=TOKEN_LABEL, pin=SecretStr(PIN))
        providers.append(("pkcs11 provider (SoftHSM2)", hsm))
    rows: list[Row] = []
    for index, (name, provider) in enumerate(providers):
        provider.create_version("eu", 1)
        wrapped = provider.wrap("eu", 1, dek, binding)
        iterations = number if index == 0 else max(number // 20, 50)
        seconds = per_call(
            lambda p=provider, w=wrapped: p.unwrap("eu", 1, w, binding), iterations, repeat
        )
        rows.append(Row(section, name, seconds, index == 0))
        provider.close()
    if module is None:
        rows.append(Row(section, "pkcs11 provider: skipped (softhsm2-util not installed)", 0.0))
    return rows


def bench_keyring(number: int, repeat: int, home: Path) -> list[Row]:
    from bastion import migrate
    from bastion.clock import SystemClock
    from bastion.crypto.keyring import Keyring
    from bastion.crypto.providers import LocalKeyProvider
    from bastion.residency.databases import Database, Regions, create_db_engine

    home.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(f"sqlite:///{home / 'eu.db'}")
    migrate.upgrade(engine, "region")
    database = Database("eu", engine)
    provider = LocalKeyProvider(home, mode="development")
    keyring = Keyring(regions=Regions({"eu": database}), provider=provider, clock=SystemClock())
    uncached = Keyring(
        regions=Regions({"eu": database}), provider=provider, clock=SystemClock(), cache_size=0
    )
    with database.transaction(write=True) as conn:
        key_id = keyring.dek_for_subject(conn, "eu", "con_eu_x").id
    wrapped = provider.wrap("eu", 1, os.urandom(32), b"aad")
    section = "DEK lookup, keyring (SQLite)"
    with database.transaction() as conn:
        rows = [
            Row(
                section,
                "local provider unwrap",
                per_call(lambda: provider.unwrap("eu", 1, wrapped, b"aad"), number, repeat),
                True,
            ),
            Row(
                section,
                "dek_by_id, cache hit",
                per_call(lambda: keyring.dek_by_id(conn, "eu", key_id), number, repeat),
            ),
            Row(
                section,
                "dek_by_id, cache miss (SELECT + unwrap)",
                per_call(
                    lambda: uncached.dek_by_id(conn, "eu", key_id), max(number // 10, 100), repeat
                ),
            ),
        ]
    keyring.close()
    engine.dispose()
    return rows


def bench_blind_index(number: int, repeat: int) -> list[Row]:
    from bastion.crypto.blindindex import BlindIndexer

    key = os.urandom(32)
    indexer = BlindIndexer("eu", os.urandom(32))
    email = "Anna.Schmidt@Example-Mail.com"
    normalised = email.lower()
    section = "blind index"
    return [
        Row(
            section,
            "hmac.digest SHA-256 (one-shot)",
            per_call(lambda: hmac.digest(key, normalised.encode(), hashlib.sha256), number, repeat),
            True,
        ),
        Row(
            section,
            "index, normalised input",
            per_call(lambda: indexer.index("contacts", "email", normalised), number, repeat),
        ),
        Row(
            section,
            "index_value, email",
            per_call(
                lambda: indexer.index_value("contacts", "email", email, kind="email"),
                number,
                repeat,
            ),
        ),
        Row(
            section,
            "index_value, phone (libphonenumber)",
            per_call(
                lambda: indexer.index_value("contacts", "phone", "+49 30 1234567", kind="phone"),
                max(number // 10, 100),
                repeat,
            ),
        ),
    ]


def render(rows: list[Row]) -> str:
    lines: list[str] = []
    baseline = 0.0
    section = ""
    for row in rows:
        if row.section != section:
            section = row.section
            lines.append(f"\n{section}")
            lines.append(f"  {'operation':<44} {'us/op':>9} {'ratio':>7}")
        if row.baseline:
            baseline = row.seconds
        if row.seconds == 0.0:
            lines.append(f"  {row.name}")
            continue
        ratio = "base" if row.baseline else f"{row.seconds / baseline:.2f}x"
        lines.append(f"  {row.name:<44} {row.seconds * 1e6:>9.2f} {ratio:>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.crypto", description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0)
    options = parser.parse_args(argv)
    from bastion.logs import configure_logging

    configure_logging("console", "error")  # the dev-KEK warnings are expected here
    number = max(int(50_000 * options.scale), 100)
    with softhsm_token() as module, tempfile.TemporaryDirectory(prefix="bastion-bench-") as home:
        rows = bench_fields(number, options.repeat)
        rows += bench_unwrap(number, options.repeat, module, Path(home))
        rows += bench_keyring(number, options.repeat, Path(home) / "keyring")
        rows += bench_blind_index(number, options.repeat)
    print(f"Python {sys.version.split()[0]}, best of {options.repeat} runs; ratio = op / baseline")
    print(render(rows))
    envelope = next(r for r in rows if r.name == "seal+unseal")
    raw = next(r for r in rows if r.baseline)
    ratio = envelope.seconds / raw.seconds
    verdict = "meets" if ratio <= 2.5 else "MISSES"
    print(f"\nseal+unseal is {ratio:.2f}x raw AES-GCM: {verdict} the 2.5x goal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
