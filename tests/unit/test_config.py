"""`load_settings`: embedded default, file, environment, validation and redaction.

Every test passes an explicit environ; nothing here reads `os.environ`.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bastion.config import SECRET_FILE, ConfigError, Settings, load_settings

SECRET = "s3cret-Canary-0123456789abcdef-0123456789"
PASSWORD = "pw-Canary-hunter2"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "bastion.toml"
    path.write_text("", encoding="utf-8")
    return path


def _env(tmp_path: Path, config_file: Path, **extra: str) -> dict[str, str]:
    return {"BASTION_CONFIG": str(config_file), "BASTION_HOME": str(tmp_path), **extra}


def _load(tmp_path: Path, config_file: Path, toml: str = "", **extra: str) -> Settings:
    config_file.write_text(toml, encoding="utf-8")
    return load_settings(_env(tmp_path, config_file, **extra))


def _refused(tmp_path: Path, config_file: Path, toml: str = "", **extra: str) -> str:
    config_file.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(_env(tmp_path, config_file, **extra))
    return str(caught.value)


# --- embedded default ----------------------------------------------------------------


def test_embedded_default(tmp_path: Path, config_file: Path) -> None:
    settings = load_settings(_env(tmp_path, config_file))
    assert settings.mode == "development"
    assert settings.home == tmp_path
    assert settings.region_names() == ("eu", "us")
    assert settings.default_region == "eu"
    assert settings.regions["eu"].url.get_secret_value() == f"sqlite:///{tmp_path / 'eu.db'}"
    assert settings.regions["us"].url.get_secret_value() == f"sqlite:///{tmp_path / 'us.db'}"
    assert settings.control_url.get_secret_value() == f"sqlite:///{tmp_path / 'control.db'}"
    assert settings.policies_dir == Path("policies")
    assert settings.log_format == "console"
    assert settings.log_level == "info"
    assert settings.max_body_bytes == 1_048_576
    assert settings.db_connect_timeout == 3
    assert settings.db_pool_size == 10


def test_dev_secret_is_generated_once_with_mode_0600_and_reused(
    tmp_path: Path, config_file: Path
) -> None:
    home = tmp_path / "home"  # does not exist yet: load_settings creates it
    env = _env(tmp_path, config_file, BASTION_HOME=str(home))
    first = load_settings(env)
    secret_path = home / SECRET_FILE
    assert secret_path.is_file()
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert first.generated_secret is True
    value = first.secret_key.get_secret_value()
    assert len(value) >= 32
    assert secret_path.read_text(encoding="ascii").strip() == value

    second = load_settings(env)
    assert second.secret_key.get_secret_value() == value
    assert second.generated_secret is True
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600


def test_each_home_gets_its_own_dev_secret(tmp_path: Path, config_file: Path) -> None:
    one = load_settings(_env(tmp_path, config_file, BASTION_HOME=str(tmp_path / "a")))
    two = load_settings(_env(tmp_path, config_file, BASTION_HOME=str(tmp_path / "b")))
    assert one.secret_key.get_secret_value() != two.secret_key.get_secret_value()


def test_configured_secret_is_not_generated(tmp_path: Path, config_file: Path) -> None:
    settings = _load(tmp_path, config_file, BASTION_SECRET_KEY=SECRET)
    assert settings.secret_key.get_secret_value() == SECRET
    assert settings.generated_secret is False
    assert not (tmp_path / SECRET_FILE).exists()


def test_production_without_a_secret_is_refused(tmp_path: Path, config_file: Path) -> None:
    message = _refused(tmp_path, config_file, BASTION_MODE="production")
    assert "secret_key" in message
    assert not (tmp_path / SECRET_FILE).exists()


def test_production_refuses_an_existing_generated_secret(tmp_path: Path, config_file: Path) -> None:
    assert _load(tmp_path, config_file).generated_secret
    assert (tmp_path / SECRET_FILE).exists()
    message = _refused(tmp_path, config_file, 'mode = "production"\n')
    assert "secret_key" in message


def test_production_with_a_secret(tmp_path: Path, config_file: Path) -> None:
    settings = _load(tmp_path, config_file, BASTION_MODE="production", BASTION_SECRET_KEY=SECRET)
    assert settings.mode == "production"
    assert settings.generated_secret is False


# --- file and environment ------------------------------------------------------------

FULL_TOML = f"""
mode = "production"
home = "/elsewhere"
policies = "/etc/bastion/policies"
default_region = "us"
secret_key = "{SECRET}"
log_format = "json"
log_level = "warning"
max_body_bytes = 2048
db_connect_timeout = 7
db_pool_size = 3

[control]
url = "postgresql+psycopg://bastion:{PASSWORD}@db.internal/control"

[regions.eu]
url = "postgresql+psycopg://bastion:{PASSWORD}@db.eu.internal/crm"

[regions.us]
url = "sqlite:///us-file.db"

[regions.ap]
"""


def test_values_from_the_file(tmp_path: Path, config_file: Path) -> None:
    config_file.write_text(FULL_TOML, encoding="utf-8")
    settings = load_settings({"BASTION_CONFIG": str(config_file)})
    assert settings.mode == "production"
    assert settings.home == Path("/elsewhere")
    assert settings.policies_dir == Path("/etc/bastion/policies")
    assert settings.secret_key.get_secret_value() == SECRET
    assert settings.generated_secret is False
    assert settings.log_format == "json"
    assert settings.log_level == "warning"
    assert settings.max_body_bytes == 2048
    assert settings.db_connect_timeout == 7
    assert settings.db_pool_size == 3
    assert settings.region_names() == ("eu", "us", "ap")
    assert settings.default_region == "us"
    assert settings.control_url.get_secret_value().endswith("@db.internal/control")
    assert settings.regions["eu"].url.get_secret_value().endswith("@db.eu.internal/crm")
    assert settings.regions["us"].url.get_secret_value() == "sqlite:///us-file.db"
    # A region section without a url gets its SQLite file under home.
    assert settings.regions["ap"].url.get_secret_value() == "sqlite:////elsewhere/ap.db"


def test_environment_overrides_the_file(tmp_path: Path, config_file: Path) -> None:
    other_secret = "env-secret-0123456789abcdef-0123456789"
    settings = _load(
        tmp_path,
        config_file,
        FULL_TOML,
        BASTION_MODE="development",
        BASTION_POLICIES=str(tmp_path / "p"),
        BASTION_DEFAULT_REGION="eu",
        BASTION_SECRET_KEY=other_secret,
        BASTION_LOG_FORMAT="console",
        BASTION_LOG_LEVEL="error",
        BASTION_MAX_BODY_BYTES="4096",
        BASTION_DB_CONNECT_TIMEOUT="9",
        BASTION_DB_POOL_SIZE="11",
        BASTION_CONTROL_URL="sqlite:///env-control.db",
        BASTION_REGION_EU_URL="sqlite:///env-eu.db",
    )
    assert settings.mode == "development"
    assert settings.home == tmp_path
    assert settings.policies_dir == tmp_path / "p"
    assert settings.default_region == "eu"
    assert settings.secret_key.get_secret_value() == other_secret
    assert settings.log_format == "console"
    assert settings.log_level == "error"
    assert settings.max_body_bytes == 4096
    assert settings.db_connect_timeout == 9
    assert settings.db_pool_size == 11
    assert settings.control_url.get_secret_value() == "sqlite:///env-control.db"
    assert settings.regions["eu"].url.get_secret_value() == "sqlite:///env-eu.db"
    assert settings.regions["us"].url.get_secret_value() == "sqlite:///us-file.db"


def test_environment_regions_replace_the_default(tmp_path: Path, config_file: Path) -> None:
    settings = _load(
        tmp_path,
        config_file,
        BASTION_REGIONS=" ap , eu2 ,, ",
        BASTION_REGION_AP_URL=f"postgresql+psycopg://u:{PASSWORD}@ap.internal/crm",
    )
    assert settings.region_names() == ("ap", "eu2")
    assert settings.default_region == "ap"
    assert settings.regions["ap"].url.get_secret_value().endswith("@ap.internal/crm")
    assert settings.regions["eu2"].url.get_secret_value() == f"sqlite:///{tmp_path / 'eu2.db'}"
    assert settings.regions["ap"].display_url == "postgresql+psycopg://u:***@ap.internal/crm"


def test_environment_regions_override_the_file_regions(tmp_path: Path, config_file: Path) -> None:
    settings = _load(tmp_path, config_file, FULL_TOML, BASTION_REGIONS="us")
    assert settings.region_names() == ("us",)
    assert settings.regions["us"].url.get_secret_value() == "sqlite:///us-file.db"


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings({"BASTION_CONFIG": str(missing), "BASTION_HOME": str(tmp_path)})
    assert str(missing) in str(caught.value)


# --- validation ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["EU", "e", "1eu", "eu-west", "eu_west", "a" * 17, "\u0435u"])
def test_invalid_region_names_are_refused(tmp_path: Path, config_file: Path, name: str) -> None:
    message = _refused(tmp_path, config_file, BASTION_REGIONS=f"us,{name}")
    assert "region name" in message


def test_invalid_region_name_in_the_file_is_refused(tmp_path: Path, config_file: Path) -> None:
    message = _refused(tmp_path, config_file, '[regions.EU]\nurl = "sqlite:///x.db"\n')
    assert "region name" in message


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://bastion:{PASSWORD}@db/crm",
        f"oracle://bastion:{PASSWORD}@db/crm",
        f"postgres://bastion:{PASSWORD}@db/crm",
    ],
)
def test_only_sqlite_and_postgresql_urls(tmp_path: Path, config_file: Path, url: str) -> None:
    message = _refused(tmp_path, config_file, BASTION_REGION_EU_URL=url)
    assert "eu" in message
    assert "sqlite or postgresql" in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg2://bastion:{PASSWORD}@db/crm",
        f"postgresql+asyncpg://bastion:{PASSWORD}@db/crm",
        f"postgresql+pg8000://bastion:{PASSWORD}@db/crm",
    ],
)
def test_postgresql_needs_the_psycopg_driver(tmp_path: Path, config_file: Path, url: str) -> None:
    message = _refused(tmp_path, config_file, BASTION_REGION_US_URL=url)
    assert "us" in message
    assert "psycopg" in message
    assert PASSWORD not in message


def test_control_url_is_checked_too(tmp_path: Path, config_file: Path) -> None:
    message = _refused(
        tmp_path, config_file, BASTION_CONTROL_URL=f"mysql://u:{PASSWORD}@db/control"
    )
    assert "control" in message
    assert PASSWORD not in message


def test_psycopg_url_is_accepted(tmp_path: Path, config_file: Path) -> None:
    url = f"postgresql+psycopg://bastion:{PASSWORD}@db/crm"
    settings = _load(tmp_path, config_file, BASTION_REGION_EU_URL=url, BASTION_CONTROL_URL=url)
    assert settings.regions["eu"].url.get_secret_value() == url
    assert settings.control_url.get_secret_value() == url


def test_unparseable_url_is_refused(tmp_path: Path, config_file: Path) -> None:
    message = _refused(tmp_path, config_file, BASTION_REGION_EU_URL=f"::{PASSWORD}::")
    assert "eu" in message
    assert "not a valid URL" in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("bogus = 1\n", "bogus"),
        ("[logging]\nlevel = 'info'\n", "logging"),
        ("[regions.eu]\nurl = 'sqlite:///x.db'\npassword = 'x'\n", "regions.eu"),
        ("[control]\nurl = 'sqlite:///c.db'\nhost = 'x'\n", "control"),
        ("max_body_bytes = 'lots'\n", "max_body_bytes"),
        ("log_level = 'loud'\n", "log_level"),
        ("mode = 'prod'\n", "mode"),
    ],
)
def test_invalid_file_content_names_the_setting(
    tmp_path: Path, config_file: Path, toml: str, named: str
) -> None:
    assert named in _refused(tmp_path, config_file, toml)


def test_invalid_toml_names_the_file(tmp_path: Path, config_file: Path) -> None:
    message = _refused(tmp_path, config_file, "this is [not toml\n")
    assert str(config_file) in message
    assert "TOML" in message


@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_short_secret_is_refused(tmp_path: Path, config_file: Path, secret: str) -> None:
    toml = f'secret_key = "{secret}"\n'
    message = _refused(tmp_path, config_file, toml)
    assert "secret_key" in message
    assert "32" in message
    if secret:
        assert secret not in message


def test_short_secret_from_the_environment_is_refused(tmp_path: Path, config_file: Path) -> None:
    message = _refused(tmp_path, config_file, BASTION_SECRET_KEY="Canary-short")
    assert "secret_key" in message
    assert "Canary-short" not in message


def test_a_secret_of_exactly_32_characters_is_enough(tmp_path: Path, config_file: Path) -> None:
    assert _load(tmp_path, config_file, BASTION_SECRET_KEY="k" * 32).secret_key


@pytest.mark.parametrize(
    "variable", ["BASTION_MAX_BODY_BYTES", "BASTION_DB_CONNECT_TIMEOUT", "BASTION_DB_POOL_SIZE"]
)
@pytest.mark.parametrize("raw", ["lots", "1.5", "1e6", "0x400", ""])
def test_non_integer_environment_numbers_are_refused(
    tmp_path: Path, config_file: Path, variable: str, raw: str
) -> None:
    message = _refused(tmp_path, config_file, **{variable: raw})
    assert variable in message
    assert "integer" in message


@pytest.mark.parametrize(
    ("variable", "raw", "named"),
    [
        ("BASTION_MAX_BODY_BYTES", "1023", "max_body_bytes"),
        ("BASTION_MAX_BODY_BYTES", str(64 * 1_048_576 + 1), "max_body_bytes"),
        ("BASTION_DB_CONNECT_TIMEOUT", "0", "db_connect_timeout"),
        ("BASTION_DB_POOL_SIZE", "201", "db_pool_size"),
        ("BASTION_LOG_LEVEL", "verbose", "log_level"),
        ("BASTION_LOG_FORMAT", "xml", "log_format"),
        ("BASTION_MODE", "staging", "mode"),
        ("BASTION_DEFAULT_REGION", "ap", "default_region"),
        ("BASTION_TOKEN_CACHE_SECONDS", "-1", "token_cache_seconds"),
        ("BASTION_TOKEN_CACHE_SECONDS", "301", "token_cache_seconds"),
        ("BASTION_TOKEN_CACHE_SECONDS", "soon", "BASTION_TOKEN_CACHE_SECONDS"),
    ],
)
def test_out_of_range_values_name_the_setting(
    tmp_path: Path, config_file: Path, variable: str, raw: str, named: str
) -> None:
    message = _refused(tmp_path, config_file, BASTION_SECRET_KEY=SECRET, **{variable: raw})
    assert named in message


def test_configured_numbers_at_their_bounds(tmp_path: Path, config_file: Path) -> None:
    settings = _load(
        tmp_path,
        config_file,
        BASTION_MAX_BODY_BYTES="1024",
        BASTION_DB_CONNECT_TIMEOUT="60",
        BASTION_DB_POOL_SIZE="1",
    )
    assert (settings.max_body_bytes, settings.db_connect_timeout, settings.db_pool_size) == (
        1024,
        60,
        1,
    )


def test_the_token_cache_is_two_seconds_unless_configured(
    tmp_path: Path, config_file: Path
) -> None:
    assert _load(tmp_path, config_file).token_cache_seconds == 2.0
    assert _load(tmp_path, config_file, BASTION_TOKEN_CACHE_SECONDS="0").token_cache_seconds == 0
    config_file.write_text(f'secret_key = "{SECRET}"\ntoken_cache_seconds = 0.5\n')
    assert load_settings({"BASTION_CONFIG": str(config_file)}).token_cache_seconds == 0.5


# --- redaction -----------------------------------------------------------------------


def test_secrets_never_appear_in_repr_or_str(tmp_path: Path, config_file: Path) -> None:
    settings = _load(tmp_path, config_file, FULL_TOML, BASTION_HOME=str(tmp_path))
    for text in (repr(settings), str(settings), repr(settings.regions), str(settings.regions)):
        assert SECRET not in text
        assert PASSWORD not in text
    assert settings.secret_key.get_secret_value() == SECRET
    assert PASSWORD in settings.regions["eu"].url.get_secret_value()
    assert PASSWORD not in settings.regions["eu"].display_url
    assert (
        settings.regions["eu"].display_url == "postgresql+psycopg://bastion:***@db.eu.internal/crm"
    )
    assert PASSWORD not in settings.model_dump_json()
    assert SECRET not in settings.model_dump_json()


def test_generated_secret_never_appears_in_repr(tmp_path: Path, config_file: Path) -> None:
    settings = _load(tmp_path, config_file)
    value = settings.secret_key.get_secret_value()
    assert value not in repr(settings)
    assert value not in str(settings)


def test_settings_are_frozen(tmp_path: Path, config_file: Path) -> None:
    settings = _load(tmp_path, config_file)
    with pytest.raises(ValueError, match="frozen"):
        settings.mode = "production"  # type: ignore[misc]


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    (tmp_path / "absent.toml").write_text("")
    settings = load_settings(
        {
            "BASTION_CONFIG": str(tmp_path / "absent.toml"),
            "BASTION_HOME": str(tmp_path),
            "BASTION_LOG_LEVEL": "WARNING",
        }
    )
    assert settings.log_level == "warning"


def test_console_settings_from_the_file_and_the_environment(
    tmp_path: Path, config_file: Path
) -> None:
    settings = _load(
        tmp_path,
        config_file,
        "[console]\nidle_minutes = 15\nlifetime_hours = 8\n",
        BASTION_CONSOLE_PAGE_SIZE="50",
    )
    assert settings.console.idle_minutes == 15
    assert settings.console.lifetime_hours == 8
    assert settings.console.page_size == 50
    assert settings.console.cookie_secure is True  # the default
    assert "idle_minutes" in _refused(tmp_path, config_file, BASTION_CONSOLE_IDLE_MINUTES="0")
    assert "console" in _refused(tmp_path, config_file, "[console]\nsecure = false\n")


def test_production_refuses_a_console_cookie_without_secure(
    tmp_path: Path, config_file: Path
) -> None:
    relaxed = _load(tmp_path, config_file, BASTION_CONSOLE_COOKIE_SECURE="false")
    assert relaxed.console.cookie_secure is False  # development, on loopback only
    message = _refused(
        tmp_path,
        config_file,
        BASTION_MODE="production",
        BASTION_SECRET_KEY=SECRET,
        BASTION_CONSOLE_COOKIE_SECURE="false",
    )
    assert "cookie_secure" in message
