"""The process's live objects, built once (app lifespan or CLI) and passed down.

Nothing in Bastion is a module-level singleton: engines, the loaded policy, the
clock and the services hang off one `State`, so tests build as many independent
instances as they like and a policy reload swaps one attribute.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bastion.clock import Clock, SystemClock
from bastion.config import Settings
from bastion.crm.catalog import ENTITIES
from bastion.crm.cursors import CursorCodec
from bastion.crm.service import RecordService
from bastion.policy.engine import Policy, load_policy
from bastion.principals.tokens import TokenService
from bastion.residency.databases import CONTROL, Database, Regions, create_db_engine


@dataclass
class State:
    settings: Settings
    clock: Clock
    control: Database
    regions: Regions
    policy: Policy
    tokens: TokenService = field(init=False)
    records: RecordService = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = TokenService(
            self.control,
            self.clock,
            known_roles=self.policy.roles,
            known_regions=self.regions.names,
        )
        self.records = RecordService(
            regions=self.regions,
            policy=lambda: self.policy,
            clock=self.clock,
            cursors=CursorCodec(self.settings.secret_key.get_secret_value().encode()),
        )

    def close(self) -> None:
        self.regions.dispose()
        self.control.engine.dispose()


def build_state(settings: Settings, *, clock: Clock | None = None) -> State:
    """Engines for the control database and every region, and the loaded policy."""
    policy = load_policy(
        settings.policies_dir, regions=settings.region_names(), entities=tuple(ENTITIES)
    )

    def database(name: str, url: str) -> Database:
        engine = create_db_engine(
            url, connect_timeout=settings.db_connect_timeout, pool_size=settings.db_pool_size
        )
        return Database(name, engine)

    control = database(CONTROL, settings.control_url.get_secret_value())
    regions = Regions(
        {
            name: database(name, region.url.get_secret_value())
            for name, region in settings.regions.items()
        }
    )
    return State(
        settings=settings,
        clock=clock or SystemClock(),
        control=control,
        regions=regions,
        policy=policy,
    )
