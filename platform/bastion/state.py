"""The process's live objects, built once (app lifespan or CLI) and passed down.

Nothing in Bastion is a module-level singleton: engines, the loaded policy, the
clock and the services hang off one `State`, so tests build as many independent
instances as they like and a policy reload swaps one attribute.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bastion.analytics.service import PipelineAnalytics
from bastion.audit import AuditLog, key_ring
from bastion.automation.service import Automation
from bastion.bulk.imports import Importer
from bastion.clock import Clock, SystemClock
from bastion.config import Settings
from bastion.crm.cursors import CursorCodec
from bastion.crm.service import RecordService
from bastion.crypto.keyring import Keyring, build_keyring
from bastion.dsr.gate import Gate
from bastion.dsr.holds import LegalHolds, preservation
from bastion.dsr.jobs import DsrRunner
from bastion.dsr.service import DsrService
from bastion.errors import RegionUnavailable
from bastion.jobs.runner import JobRunner
from bastion.policy.engine import Policy, PolicySource
from bastion.policy.lint import Finding, checked_policy
from bastion.policy.store import PolicyChange, PolicyStore, PolicyWatcher
from bastion.principals.sessions import SessionService
from bastion.principals.tokens import TokenService
from bastion.quality.merge import MergeService
from bastion.quality.service import DuplicateService
from bastion.residency.databases import CONTROL, Database, Regions, create_db_engine

log = structlog.get_logger("bastion.state")


@dataclass
class State:
    settings: Settings
    clock: Clock
    control: Database
    regions: Regions
    policy: Policy
    keys: Keyring = field(init=False)
    tokens: TokenService = field(init=False)
    sessions: SessionService = field(init=False)
    records: RecordService = field(init=False)
    analytics: PipelineAnalytics = field(init=False)
    policy_store: PolicyStore = field(init=False)
    policy_watcher: PolicyWatcher = field(init=False)
    audit: AuditLog = field(init=False)
    dsr: DsrService = field(init=False)
    dsr_jobs: DsrRunner = field(init=False)
    automation: Automation = field(init=False)
    jobs: JobRunner = field(init=False)
    duplicates: DuplicateService = field(init=False)
    merges: MergeService = field(init=False)
    imports: Importer = field(init=False)

    def __post_init__(self) -> None:
        self.keys = build_keyring(
            self.settings.keys,
            mode=self.settings.mode,
            home=self.settings.home,
            regions=self.regions,
            clock=self.clock,
        )
        self.tokens = TokenService(
            self.control,
            self.clock,
            known_roles=self.policy.roles,
            known_regions=self.regions.names,
            cache_ttl=timedelta(seconds=self.settings.token_cache_seconds),
        )
        self.sessions = SessionService(
            self.control,
            self.clock,
            self.tokens,
            idle=timedelta(minutes=self.settings.console.idle_minutes),
            lifetime=timedelta(hours=self.settings.console.lifetime_hours),
        )
        # One audit chain per database; production fails here if a signing key is missing.
        self.audit = AuditLog(
            databases={
                CONTROL: self.control,
                **{r: self.regions.get(r) for r in self.regions.names},
            },
            clock=self.clock,
            settings=self.settings.audit,
            keys=key_ring(
                self.settings.audit,
                home=self.settings.home,
                production=self.settings.mode == "production",
            ),
            cursors=CursorCodec(self.settings.secret_key.get_secret_value().encode()),
        )
        self.records = RecordService(
            regions=self.regions,
            policy=lambda: self.policy,
            clock=self.clock,
            cursors=CursorCodec(self.settings.secret_key.get_secret_value().encode()),
            keys=self.keys,
            idempotency_secret=derived_key(self.settings, b"bastion idempotency fingerprint v1"),
            audit_notify=self.audit.notify,
        )
        self.analytics = PipelineAnalytics(
            pipeline=self.records, regions=self.regions, settings=self.settings.analytics
        )

        worker_id = f"{socket.gethostname()}:{os.getpid()}"[:64]
        self.dsr_jobs = DsrRunner(
            regions=self.regions,
            keys=self.keys,
            records=self.records,
            audit=self.audit,
            clock=self.clock,
            settings=self.settings.dsr,
            policy=lambda: self.policy,
            worker_id=worker_id,
            failpoints=self.settings.mode != "production",
        )
        gate = Gate(
            regions=self.regions,
            recorder=self.records.recorder,
            clock=self.clock,
            policy=lambda: self.policy,
        )
        cursors = CursorCodec(self.settings.secret_key.get_secret_value().encode())
        self.automation = Automation(
            settings=self.settings,
            records=self.records,
            tokens=self.tokens,
            gate=gate,
            clock=self.clock,
            policy=lambda: self.policy,
            cursors=cursors,
            worker_id=worker_id,
            fingerprint_key=derived_key(self.settings, b"bastion activity event fingerprint v1"),
        )
        # One runner for every background job: data subjects' requests and automation.
        self.jobs = JobRunner(
            regions=self.regions,
            queues=[self.dsr_jobs, *self.automation.queues],
            poll_seconds=self.settings.dsr.poll_seconds,
        )
        self.dsr = DsrService(
            regions=self.regions,
            keys=self.keys,
            records=self.records,
            clock=self.clock,
            gate=gate,
            settings=self.settings.dsr,
            cursors=cursors,
            wake=self.jobs.wake,
        )
        self.records.preservation = preservation(self.clock)
        self.imports = Importer(
            self.records,
            self.settings.imports,
            derived_key(self.settings, b"bastion import row key v1"),
            cursors,
            failpoint=(
                os.environ.get("BASTION_FAILPOINT") if self.settings.mode != "production" else None
            ),
        )
        self.duplicates = DuplicateService(
            pipeline=self.records, regions=self.regions, cursors=cursors
        )
        self.merges = MergeService(
            records=self.records, regions=self.regions, settings=self.settings.dedup
        )
        self.legal_holds = LegalHolds(
            gate=gate, regions=self.regions, keys=self.keys, clock=self.clock, cursors=cursors
        )
        self.policy_store = PolicyStore(self.control, self.clock)
        self.policy_watcher = PolicyWatcher(
            self.policy_store,
            current=lambda: self.policy,
            build=self.build_policy,
            swap=self.swap_policy,
            interval=self.settings.policy_poll_seconds,
        )

    def build_policy(self, source: PolicySource) -> Policy:
        """A checked policy for this deployment's regions (`PolicyError` if refused)."""
        return checked_policy(source, regions=self.regions.names)[0]

    def swap_policy(self, policy: Policy) -> None:
        # One assignment: a request holds the policy it started with to the end.
        self.policy = policy

    def reload_policy(
        self, *, actor: str, reason: str
    ) -> tuple[Policy, PolicyChange | None, list[Finding]]:
        """Load the policy files, refuse them if they do not pass, else activate them
        here and (through the control database) in every other worker."""
        source = PolicySource.from_directory(self.settings.policies_dir)
        policy, findings = checked_policy(source, regions=self.regions.names)
        change = self.policy_store.activate(source, actor=actor, reason=reason)
        self.swap_policy(policy)
        return policy, change, findings

    def follow_active_policy(self, *, activate_files: bool = True) -> None:
        """At start: activate our files if their version was never recorded (servers
        only, not CLI commands), then run whatever version is active (so an old host
        never rolls a policy back)."""
        try:
            if activate_files:
                self.policy_store.activate(
                    self.policy.source,
                    actor="system:start",
                    reason=f"first start with these policy files, on {socket.gethostname()}",
                    only_if_new=True,
                )
            self.policy_watcher.sync()
        except RegionUnavailable:
            log.warning("policy_store_unavailable", detail="running the policy files as loaded")

    @property
    def runs_jobs_in_process(self) -> bool:
        """Whether this process runs background jobs itself — data subjects' requests
        and automation (see DsrSettings.in_process)."""
        if self.settings.dsr.in_process is not None:
            return self.settings.dsr.in_process
        urls = [
            self.control.engine.url,
            *(self.regions.get(r).engine.url for r in self.regions.names),
        ]
        return all(url.get_backend_name() == "sqlite" for url in urls)

    def close(self) -> None:
        self.jobs.stop()
        self.automation.close()
        self.policy_watcher.stop()
        self.audit.close()
        self.keys.close()
        self.regions.dispose()
        self.control.engine.dispose()


def derived_key(settings: Settings, purpose: bytes) -> bytes:
    """A key for one purpose, derived from the deployment secret (never stored)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(
        settings.secret_key.get_secret_value().encode()
    )


def build_state(
    settings: Settings, *, clock: Clock | None = None, activate_policy_files: bool = True
) -> State:
    """Engines for the control database and every region, and the loaded policy.

    A server activates its policy files at start when their version is new; CLI
    commands pass `activate_policy_files=False` and only follow the active version
    (`bastion policy reload` is how the CLI activates files).
    """
    source = PolicySource.from_directory(settings.policies_dir)
    policy, _findings = checked_policy(source, regions=settings.region_names())

    def database(name: str, url: str) -> Database:
        engine = create_db_engine(
            url,
            connect_timeout=settings.db_connect_timeout,
            pool_size=settings.db_pool_size,
            lock_timeout_ms=settings.db_lock_timeout_ms,
            statement_timeout_ms=settings.db_statement_timeout_ms,
        )
        return Database(name, engine)

    control = database(CONTROL, settings.control_url.get_secret_value())
    regions = Regions(
        {
            name: database(name, region.url.get_secret_value())
            for name, region in settings.regions.items()
        }
    )
    state = State(
        settings=settings,
        clock=clock or SystemClock(),
        control=control,
        regions=regions,
        policy=policy,
    )
    state.follow_active_policy(activate_files=activate_policy_files)
    return state
