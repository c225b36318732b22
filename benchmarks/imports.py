"""`python -m benchmarks.imports`: CSV import of 100k contacts against a plain bulk insert.

In process, on SQLite and (when reachable) PostgreSQL, with a fresh deployment each:

- a CSV file of N contacts (default 100,000; first and last name, email, phone,
  title, city, a custom field) where 5% of the rows are invalid (a malformed email or
  phone) and 10% repeat an earlier row's email in another spelling (upper case,
  spaces): written to disk first, never held in memory;
- the baseline: the same file parsed with `csv.reader` and the same rows inserted
  into the same contacts table with executemany, 500 rows per transaction, the
  values stored as plain UTF-8 bytes — no validation, no policy, no keys, no blind
  indexes, no dedup, no audit;
- Bastion: `Importer.run` as `bastion import` runs it (policy per row, validation,
  a data key per contact, sealed fields, blind indexes, dedup, the report, one audit
  event per batch), then the same file again (it must create nothing);
- Bastion again, into a fresh deployment, with the rows prepared in the importing
  process instead of a helper process (`[imports] helper_process = false`).

Prints rows/s of each, the ratio, the report's counts against the planted ones, and
how much the process's resident memory grew during the import, sampled (the import
streams: it holds one batch of rows, whatever the file's size).
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import func, insert, select

from bastion.bulk.mapping import parse_mapping
from bastion.crm.tables import ENTITY_TABLES
from bastion.logs import configure_logging
from bastion.principals.caller import Caller
from bastion.residency.ids import RecordId
from bastion.state import State
from benchmarks.environment import chosen_backends
from benchmarks.pipeline import deployment

GOAL = 5_000  # rows/s with encryption, blind indexes and audit
_BATCH = 500
_HEADER = ["first_name", "last_name", "email", "phone", "title", "mailing_city", "custom.tier"]


def write_file(path: Path, rows: int, seed: int = 7) -> tuple[int, int]:
    """The benchmark's CSV; (invalid rows, duplicate rows) planted in it."""
    rng = random.Random(seed)
    invalid = duplicates = 0
    created: list[int] = []  # rows that become records: what a duplicate may repeat
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(_HEADER)
        for n in range(rows):
            email = f"person.{n}@bench.example"
            phone = f"+4930{n:08d}"
            roll = rng.random()
            if roll < 0.05:
                invalid += 1
                email = f"person.{n}-at-bench.example" if n % 2 else email
                phone = phone if n % 2 else "call me"
            elif roll < 0.15 and created:
                duplicates += 1
                earlier = created[rng.randrange(max(0, len(created) - 5_000), len(created))]
                email = f"  PERSON.{earlier}@Bench.Example "
            else:
                created.append(n)
            writer.writerow(
                [
                    rng.choice(("Anna", "Jonas", "Mia", "Luca", "Émilie", "Søren")),
                    rng.choice(("Schmidt", "Müller", "Rossi", "Dubois", "Nowak", "García"))
                    + str(n),
                    email,
                    phone,
                    rng.choice(("CFO", "Head of IT", "Buyer", "")),
                    rng.choice(("Berlin", "Lyon", "Milano", "Gdańsk")),
                    rng.choice(("gold", "silver", "")),
                ]
            )
    return invalid, duplicates


def baseline(state: State, path: Path) -> float:
    """Seconds to bulk-insert the file's rows as they are (plaintext bytes)."""
    table = ENTITY_TABLES["contacts"]
    blank = dict.fromkeys(table.c.keys())
    database = state.regions.get("eu")
    started = time.perf_counter()
    with path.open(newline="", encoding="utf-8") as source:
        reader = csv.reader(source)
        next(reader)
        batch: list[dict[str, object]] = []
        for cells in reader:
            now = state.clock.now()
            first, last, email, phone, title, city, tier = cells
            batch.append(
                {
                    **blank,
                    "id": str(RecordId.new("con", "eu", now)),
                    "region": "eu",
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                    "first_name": first.encode(),
                    "last_name": last.encode(),
                    "email": email.encode(),
                    "phone": phone.encode(),
                    "title": title or None,
                    "mailing_city": city,
                    "custom": {"tier": tier} if tier else {},
                }
            )
            if len(batch) == _BATCH:
                with database.transaction(write=True) as conn:
                    conn.execute(insert(table), batch)
                batch = []
        if batch:
            with database.transaction(write=True) as conn:
                conn.execute(insert(table), batch)
    return time.perf_counter() - started


def _rss_kib() -> int:
    """The process's resident set size now (VmRSS), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RssPeak:
    """The highest resident set size seen (sampled every 20 ms) while the block runs,
    above what it was when the block began: the import's own memory, whatever ran
    before it in this process."""

    def __init__(self) -> None:
        self.growth_mib = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> RssPeak:
        self._start = _rss_kib()
        self._peak = self._start
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._peak = max(self._peak, _rss_kib())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_kib())
        self.growth_mib = (self._peak - self._start) / 1024


def report(backend: str, rows: int, work: Path) -> None:
    path = work / "contacts.csv"
    invalid, duplicates = write_file(path, rows)
    size_mb = path.stat().st_size / 1e6
    print(
        f"\n== {backend}: {rows:,} rows ({size_mb:.1f} MB), {invalid:,} invalid planted, "
        f"{duplicates:,} duplicates planted"
    )
    (work / "baseline").mkdir()
    (work / "bastion").mkdir()
    with deployment(backend, work / "baseline") as state:
        plain_seconds = baseline(state, path)
        with state.regions.get("eu").transaction() as conn:
            stored = conn.execute(select(func.count()).select_from(ENTITY_TABLES["contacts"]))
            assert stored.scalar_one() == rows
    plain_rate = rows / plain_seconds
    print(f"plain bulk insert (baseline): {plain_seconds:7.1f} s  {plain_rate:9,.0f} rows/s")
    with deployment(backend, work / "bastion") as state:
        issued = state.tokens.issue(principal_name="importer", roles=["admin"], regions=["eu"])
        caller = Caller(issued.principal)
        mapping = parse_mapping(None)
        started = time.perf_counter()
        with path.open("rb") as source, RssPeak() as memory:
            run = state.imports.run(caller, "contacts", source, region="eu", mapping=mapping)
        seconds = time.perf_counter() - started
        rss_growth = memory.growth_mib
        rate = rows / seconds
        print(
            f"bastion import:               {seconds:7.1f} s  {rate:9,.0f} rows/s  "
            f"(created {run.created:,}, invalid {run.invalid:,}, duplicates {run.duplicates:,})"
        )
        started = time.perf_counter()
        with path.open("rb") as source:
            again = state.imports.run(caller, "contacts", source, region="eu", mapping=mapping)
        rerun = time.perf_counter() - started
        print(
            f"same file again:              {rerun:7.1f} s  {rows / rerun:9,.0f} rows/s  "
            f"(created {again.created:,}, skipped {again.skipped:,})"
        )
    # The same import with its rows prepared in the importing process (no helper
    # process, `[imports] helper_process = false`), into a fresh deployment: what the
    # helper buys depends on a core being free for it.
    (work / "inline").mkdir()
    with deployment(backend, work / "inline", {"BASTION_IMPORTS_HELPER_PROCESS": "false"}) as state:
        issued = state.tokens.issue(principal_name="importer", roles=["admin"], regions=["eu"])
        started = time.perf_counter()
        with path.open("rb") as source:
            inline = state.imports.run(
                Caller(issued.principal), "contacts", source, region="eu", mapping=mapping
            )
        inline_seconds = time.perf_counter() - started
        assert inline.created == run.created
        print(
            f"without the helper process:   {inline_seconds:7.1f} s  "
            f"{rows / inline_seconds:9,.0f} rows/s  (rows prepared in the importing process)"
        )
    print(
        f"report: invalid rows {run.invalid:,} (planted {invalid:,}); duplicates "
        f"{run.duplicates:,} (planted {duplicates:,})"
    )
    print(
        f"peak resident memory grew {rss_growth:.0f} MiB during the import of a "
        f"{size_mb:.0f} MB file (it holds one batch of rows; dedup candidates' keys are "
        "not cached)"
    )
    print(f"import / plain bulk insert: {rate / plain_rate:.2f}x")
    verdict = "met" if rate >= GOAL else "NOT met"
    print(
        f"goal: >= {GOAL:,} rows/s with encryption, blind indexes and audit: "
        f"{rate:,.0f} rows/s on {backend} ({verdict}); second run created {again.created}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "all"), default="all")
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    configure_logging("console", "error")
    for backend in chosen_backends(args.backend):
        with tempfile.TemporaryDirectory(prefix="bastion-bench-imports-") as work:
            report(backend, args.rows, Path(work))


if __name__ == "__main__":
    main()
