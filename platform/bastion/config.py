"""Typed settings from `bastion.toml` and `BASTION_*` environment variables.

Precedence: environment > config file > embedded default. With nothing configured
Bastion runs on its *embedded default*: regions `eu` and `us`, one SQLite file per
region plus a control database under `BASTION_HOME` (default `./.bastion`), and a
development secret generated there. Production mode refuses the generated secret.

Database URLs and the secret key are `SecretStr`: their repr is redacted, so a
settings object can be logged or printed without leaking credentials.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from sqlalchemy.engine import make_url

from bastion.analytics.settings import AnalyticsSettings
from bastion.api.limits import LimitSettings
from bastion.audit.settings import AuditSettings
from bastion.automation.settings import AutomationSettings, WebhookSettings
from bastion.bulk.settings import ImportSettings
from bastion.console.settings import ConsoleSettings
from bastion.crypto.settings import KeySettings
from bastion.dsr.settings import DsrSettings
from bastion.quality.settings import DedupSettings
from bastion.residency.ids import is_valid_region_name

Mode = Literal["development", "production"]

DEFAULT_REGIONS = ("eu", "us")
SECRET_FILE = "secret.key"  # noqa: S105 - a file name, not a secret


class ConfigError(Exception):
    """The configuration is unusable; the message says which setting and why."""


class RegionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    url: SecretStr

    @property
    def display_url(self) -> str:
        """The database URL with any password masked, safe to log."""
        return make_url(self.url.get_secret_value()).render_as_string(hide_password=True)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = "development"
    home: Path
    policies_dir: Path
    control_url: SecretStr
    regions: dict[str, RegionSettings]
    default_region: str
    secret_key: SecretStr
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    db_connect_timeout: int = Field(default=3, ge=1, le=60)
    # PostgreSQL: how long a statement may wait for a lock, and run, before the
    # request gives up with 503 (a locked table must not hang every request).
    db_lock_timeout_ms: int = Field(default=10_000, ge=100, le=600_000)
    db_statement_timeout_ms: int = Field(default=30_000, ge=100, le=3_600_000)
    db_pool_size: int = Field(default=10, ge=1, le=200)
    # How often each worker checks the control database for a newly activated policy.
    policy_poll_seconds: float = Field(default=2.0, ge=0.1, le=3600)
    # How long a worker may go on accepting a token it checked in the control database
    # without checking again: a revocation, expiry of the principal's roles or a
    # disabled principal reaches other workers within this time (at once in the
    # worker that made the change). 0 checks every request.
    token_cache_seconds: float = Field(default=2.0, ge=0, le=300)
    keys: KeySettings = Field(default_factory=KeySettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    dsr: DsrSettings = Field(default_factory=DsrSettings)
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings)
    imports: ImportSettings = Field(default_factory=ImportSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    automation: AutomationSettings = Field(default_factory=AutomationSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    generated_secret: bool = False

    @field_validator("regions")
    @classmethod
    def _regions_named(cls, value: dict[str, RegionSettings]) -> dict[str, RegionSettings]:
        if not value:
            raise ValueError("at least one region must be configured")
        for name in value:
            if not is_valid_region_name(name):
                raise ValueError(
                    f"region name {name!r} must be 2-16 lower-case letters or digits, "
                    "starting with a letter"
                )
        return value

    def region_names(self) -> tuple[str, ...]:
        return tuple(self.regions)


class _FileConfig(BaseModel):
    """The shape of `bastion.toml`; unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode | None = None
    home: str | None = None
    policies: str | None = None
    default_region: str | None = None
    secret_key: str | None = None
    log_format: Literal["console", "json"] | None = None
    log_level: str | None = None
    max_body_bytes: int | None = None
    db_connect_timeout: int | None = None
    db_lock_timeout_ms: int | None = None
    db_statement_timeout_ms: int | None = None
    db_pool_size: int | None = None
    policy_poll_seconds: float | None = None
    token_cache_seconds: float | None = None
    control: dict[str, str] | None = None
    regions: dict[str, dict[str, str]] | None = None
    keys: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    dsr: dict[str, Any] | None = None
    dedup: dict[str, Any] | None = None
    analytics: dict[str, Any] | None = None
    imports: dict[str, Any] | None = None
    limits: dict[str, Any] | None = None
    console: dict[str, Any] | None = None
    automation: dict[str, Any] | None = None
    webhooks: dict[str, Any] | None = None


def _read_file(path: Path) -> _FileConfig:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    try:
        return _FileConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"config file {path}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
    )


def _dev_secret(home: Path) -> str:
    """Read, or create with mode 0600, the development secret under BASTION_HOME."""
    path = home / SECRET_FILE
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    home.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(value + "\n")
    return value


def _regions_from(
    file_regions: dict[str, dict[str, str]] | None, env: Mapping[str, str], home: Path
) -> dict[str, RegionSettings]:
    names: list[str]
    if env.get("BASTION_REGIONS"):
        names = [n.strip() for n in env["BASTION_REGIONS"].split(",") if n.strip()]
    elif file_regions:
        names = list(file_regions)
    else:
        names = list(DEFAULT_REGIONS)
    regions: dict[str, RegionSettings] = {}
    for name in names:
        if not is_valid_region_name(name):
            raise ConfigError(
                f"region name {name!r} must be 2-16 lower-case letters or digits, "
                "starting with a letter"
            )
        section = (file_regions or {}).get(name, {})
        unknown = set(section) - {"url"}
        if unknown:
            raise ConfigError(f"regions.{name}: unknown keys {sorted(unknown)}")
        url = (
            env.get(f"BASTION_REGION_{name.upper()}_URL")
            or section.get("url")
            or f"sqlite:///{home / f'{name}.db'}"
        )
        regions[name] = RegionSettings(name=name, url=SecretStr(_checked_url(url, name)))
    return regions


def _checked_url(url: str, what: str) -> str:
    try:
        parsed = make_url(url)
    except Exception:  # SQLAlchemy raises ArgumentError or ValueError variants
        raise ConfigError(f"the database URL for {what} is not a valid URL") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"the database URL for {what} must be sqlite or postgresql+psycopg")
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() != "psycopg":
        raise ConfigError(f"the PostgreSQL URL for {what} must use the psycopg driver")
    return url


def _section(
    name: str, model: type[BaseModel], table: dict[str, Any] | None, env: Mapping[str, str]
) -> BaseModel:
    """A sub-settings model from its TOML table, `BASTION_<NAME>_<FIELD>` variables winning."""
    values: dict[str, Any] = dict(table or {})
    for field in model.model_fields:
        raw = env.get(f"BASTION_{name.upper()}_{field.upper()}")
        if raw is not None:
            values[field] = raw
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"{name}: {_describe(exc)}") from None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from the environment and the config file it names.

    In development mode with no secret configured, a random secret is generated
    once under BASTION_HOME (side effect: creates that file). Raises `ConfigError`.
    """
    env = os.environ if environ is None else environ
    config_path = Path(env.get("BASTION_CONFIG", "bastion.toml"))
    if "BASTION_CONFIG" in env or config_path.exists():
        file = _read_file(config_path)
    else:
        file = _FileConfig()

    home = Path(env.get("BASTION_HOME") or file.home or ".bastion")
    values: dict[str, Any] = {
        "home": home,
        "policies_dir": Path(env.get("BASTION_POLICIES") or file.policies or "policies"),
    }
    for key in ("mode", "log_format", "log_level"):
        chosen = env.get(f"BASTION_{key.upper()}") or getattr(file, key)
        if chosen is not None:
            # `INFO` and `info` mean the same; the setting is an enum of lower-case names.
            values[key] = chosen.lower()
    for key in (
        "max_body_bytes",
        "db_connect_timeout",
        "db_lock_timeout_ms",
        "db_statement_timeout_ms",
        "db_pool_size",
        "policy_poll_seconds",
        "token_cache_seconds",
    ):
        raw = env.get(f"BASTION_{key.upper()}")
        if raw is not None:
            fractional = key.endswith("_seconds")
            try:
                values[key] = float(raw) if fractional else int(raw)
            except ValueError:
                kind = "a number" if fractional else "an integer"
                raise ConfigError(f"BASTION_{key.upper()} must be {kind}") from None
        elif getattr(file, key) is not None:
            values[key] = getattr(file, key)

    control = file.control or {}
    if set(control) - {"url"}:
        raise ConfigError(f"control: unknown keys {sorted(set(control) - {'url'})}")
    control_url = (
        env.get("BASTION_CONTROL_URL") or control.get("url") or f"sqlite:///{home / 'control.db'}"
    )
    values["control_url"] = SecretStr(_checked_url(control_url, "the control database"))
    regions = _regions_from(file.regions, env, home)
    values["regions"] = regions

    default_region = env.get("BASTION_DEFAULT_REGION") or file.default_region or next(iter(regions))
    if default_region not in regions:
        raise ConfigError(f"default_region {default_region!r} is not a configured region")
    values["default_region"] = default_region

    values["keys"] = _section("keys", KeySettings, file.keys, env)
    values["audit"] = _section("audit", AuditSettings, file.audit, env)
    values["dsr"] = _section("dsr", DsrSettings, file.dsr, env)
    values["dedup"] = _section("dedup", DedupSettings, file.dedup, env)
    values["analytics"] = _section("analytics", AnalyticsSettings, file.analytics, env)
    values["imports"] = _section("imports", ImportSettings, file.imports, env)
    values["limits"] = _section("limits", LimitSettings, file.limits, env)
    console = _section("console", ConsoleSettings, file.console, env)
    assert isinstance(console, ConsoleSettings)
    values["console"] = console
    values["automation"] = _section("automation", AutomationSettings, file.automation, env)
    values["webhooks"] = _section("webhooks", WebhookSettings, file.webhooks, env)

    secret = env.get("BASTION_SECRET_KEY") or file.secret_key
    mode = values.get("mode", "development")
    if mode == "production" and not console.cookie_secure:
        raise ConfigError(
            "console.cookie_secure = false is for development on a loopback address; "
            "production mode refuses it"
        )
    if secret is None:
        if mode == "production":
            raise ConfigError(
                "production mode needs secret_key (or BASTION_SECRET_KEY); "
                "the generated development secret is refused"
            )
        secret = _dev_secret(home)
        values["generated_secret"] = True
    if len(secret) < 32:
        raise ConfigError("secret_key must be at least 32 characters")
    values["secret_key"] = SecretStr(secret)

    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
