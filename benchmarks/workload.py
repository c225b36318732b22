"""The requests both the HTTP benchmark and the profile send, and the row bookkeeping.

Each app has its own databases. Both apps receive the same sequence of creates
and the same lists, byte for byte; a get names one of the app's own contacts,
picked at the same positions for both (see `get_workload`). Before each phase the
apps' contact tables are levelled to the same size (see `level_contacts`).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from sqlalchemy import Connection, create_engine, delete, func, select, text
from sqlalchemy.engine import make_url

from benchmarks.load import Call, CallFactory

LIST_LIMIT = 50
SEED_ROWS = 2 * LIST_LIMIT + 20  # per app, so a list always returns a full page
GET_POOL = 2000  # contacts the get phase picks from, per app
# The create phase numbers its contacts from here on, clear of the seeded ones; each
# create phase (one per concurrency level) starts a span further on, so that no phase
# creates a person an earlier one did (Bastion would answer 409).
CREATE_FIRST = 1_000_000
CREATE_PHASE_SPAN = 10_000_000
_CREATE_PHASES = itertools.count()

# An operation's requests for each app, given each app's eu database URL (by app,
# to look ids up) and a seeded rng: app -> the factory of its calls.
Workload = Callable[[Mapping[str, str], random.Random], dict[str, CallFactory]]


def create_call(n: int) -> Call:
    """Contact number `n`: six fields, a unique last name and email. Bastion encrypts
    three of them (first_name; last_name and email with a blind index each); the
    baseline stores them as they are."""
    return Call(
        "POST",
        "/v1/contacts",
        {
            "region": "eu",
            "first_name": "Ada",
            "last_name": f"Bench{n}",
            "email": f"bench{n}@example.com",
            "title": "Engineer",
            "mailing_country": "DE",
        },
    )


def create_calls(first: int) -> CallFactory:
    """Creates of contacts `first`, `first + 1`, ... in the order they are issued.

    The load generator's `n` restarts at 0 for the warm-up and again for the
    measured run, but Bastion answers 409 to a contact whose email it already holds
    (crm/dedup.py), so every create of a phase must be a new person: the count
    runs on across both. Each app gets its own factory, hence the same sequence.
    """
    numbers = itertools.count(first)
    return lambda _n: create_call(next(numbers))


def create_workload(urls: Mapping[str, str], _rng: random.Random) -> dict[str, CallFactory]:
    """Each app's creates for one phase: new people, numbered past every earlier phase."""
    first = CREATE_FIRST + next(_CREATE_PHASES) * CREATE_PHASE_SPAN
    return {app: create_calls(first) for app in urls}


def list_call(_n: int) -> Call:
    """The first page of contacts in one region (one query for either app)."""
    return Call("GET", f"/v1/contacts?limit={LIST_LIMIT}&region=eu")


def get_calls(ids: list[str]) -> CallFactory:
    def call(n: int) -> Call:
        return Call("GET", f"/v1/contacts/{ids[n % len(ids)]}")

    return call


@contextmanager
def _connect(url: str) -> Iterator[Connection]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def contact_ids(url: str) -> list[str]:
    """Ids of the contacts in the database at `url`, oldest first (ties by id)."""
    from bastion.crm.tables import ENTITY_TABLES

    contacts = ENTITY_TABLES["contacts"]
    with _connect(url) as conn:
        query = select(contacts.c.id).order_by(contacts.c.created_at, contacts.c.id)
        return list(conn.execute(query).scalars().all())


def contact_count(url: str) -> int:
    """How many contacts the database at `url` holds (a list sorts all of them)."""
    from bastion.crm.tables import ENTITY_TABLES

    contacts = ENTITY_TABLES["contacts"]
    with _connect(url) as conn:
        return int(conn.execute(select(func.count()).select_from(contacts)).scalar_one())


def trim_contacts(url: str, rows: int) -> int:
    """Delete the newest contacts in the database at `url` until `rows` remain;
    returns how many were deleted. On PostgreSQL the table is vacuumed afterwards, so
    a list does not scan the dead rows."""
    from bastion.crm.tables import ENTITY_TABLES

    contacts = ENTITY_TABLES["contacts"]
    oldest = select(contacts.c.id).order_by(contacts.c.created_at, contacts.c.id).limit(rows)
    with _connect(url) as conn, conn.begin():
        deleted = conn.execute(delete(contacts).where(contacts.c.id.not_in(oldest))).rowcount
    if deleted and make_url(url).get_backend_name() == "postgresql":
        with _connect(url) as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(text("VACUUM ANALYZE contacts"))
    return int(deleted)


def level_contacts(urls: Mapping[str, str]) -> tuple[int, dict[str, int]]:
    """Trim every app's contacts to the smallest app's count.

    Each app writes to its own tables, and in a create phase the faster app writes
    more rows; a list sorts the whole table, so without this the faster app would
    list a larger table than the slower one. Only the newest rows go, so the seeded
    ones stay. Returns (rows each app now holds, app -> contacts deleted).
    """
    counts = {app: contact_count(url) for app, url in urls.items()}
    rows = min(counts.values())
    deleted = {app: trim_contacts(urls[app], rows) for app, count in counts.items() if count > rows}
    return rows, deleted


def get_workload(urls: Mapping[str, str], rng: random.Random) -> dict[str, CallFactory]:
    """Each app gets its own contacts, picked at the same positions in age order.

    The apps write to separate databases, so they cannot share ids; instead one
    seeded draw of up to GET_POOL positions (in a shuffled order) is applied to
    each app's contacts, oldest first. Both apps thus fetch "the k-th contact
    written" in the same sequence: the same kind of request, each on its own row.
    """
    ids = {app: contact_ids(url) for app, url in urls.items()}
    available = min(len(app_ids) for app_ids in ids.values())
    if not available:
        raise RuntimeError("no contacts to get: seeding did not write any")
    positions = rng.sample(range(available), min(GET_POOL, available))
    return {app: get_calls([app_ids[p] for p in positions]) for app, app_ids in ids.items()}


# What `run` measures and `--profile` profiles, in this order. A new benchmark is a
# new entry (and, if the baseline should serve it, a route in baseline.py).
OPERATIONS: dict[str, Workload] = {
    "create": create_workload,
    "get": get_workload,
    "list": lambda urls, _rng: dict.fromkeys(urls, list_call),
}
