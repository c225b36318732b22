"""Column types and the constraint naming convention shared by every database.

Both SQLite and PostgreSQL must store the same values and order them the same way
(keyset pagination merges regions in Python), so money is an exact scaled integer
rather than a float, and timestamps are always timezone-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, DateTime, Dialect, MetaData
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on every backend.

    SQLite has no time zones: values are stored as naive UTC and made aware again
    on the way out. Naive input is a programming error and raises.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class ScaledDecimal(TypeDecorator[Decimal]):
    """An exact decimal with a fixed number of places, stored as a scaled integer.

    SQLite has no exact decimal type (it would round-trip through a float); a
    BIGINT of minor units is exact and orders correctly on both backends.
    """

    impl = BigInteger
    cache_ok = True

    def __init__(self, scale: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scale = scale

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        scaled = value.scaleb(self.scale)
        if scaled != scaled.to_integral_value():
            raise ValueError(f"value has more than {self.scale} decimal places")
        return int(scaled)

    def process_result_value(self, value: int | None, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(value).scaleb(-self.scale).quantize(Decimal(1).scaleb(-self.scale))
