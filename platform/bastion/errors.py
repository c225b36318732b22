"""The one error hierarchy. The API renders each as RFC 9457 problem+json.

A `BastionError` carries only what the caller may see: its `detail` must never
hold a field value of a CRM record (name fields, not values).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one input field: `field` is a dotted path, never a value."""

    field: str
    message: str


class BastionError(Exception):
    """Base class. `slug` names the stable problem type, `status` the HTTP status."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def type_uri(self) -> str:
        return f"urn:bastion:problem:{self.slug}"

    @property
    def extensions(self) -> dict[str, object]:
        """Extra problem members (RFC 9457 extensions): ids and names only, never values."""
        return {}


class BadRequest(BastionError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class MalformedBody(BadRequest):
    slug = "malformed-body"
    title = "Malformed request body"


class Unauthenticated(BastionError):
    status = 401
    slug = "unauthenticated"
    title = "Authentication required"


class Forbidden(BastionError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class NotFound(BastionError):
    status = 404
    slug = "not-found"
    title = "Not found"


class MethodNotAllowed(BastionError):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"

    def __init__(self, detail: str, allowed: Sequence[str]) -> None:
        super().__init__(detail)
        self.allowed = tuple(allowed)


class Conflict(BastionError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class Gone(BastionError):
    """The record existed and was erased (a data subject's request): it will not return."""

    status = 410
    slug = "erased"
    title = "Erased"


class PayloadTooLarge(BastionError):
    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class PreconditionFailed(BastionError):
    status = 412
    slug = "precondition-failed"
    title = "Precondition failed"


class UnsupportedMediaType(BastionError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class ValidationFailed(BastionError):
    status = 422
    slug = "validation-failed"
    title = "Validation failed"

    def __init__(self, detail: str, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(detail)
        self.errors = tuple(errors)


class PreconditionRequired(BastionError):
    status = 428
    slug = "precondition-required"
    title = "Precondition required"


class RegionUnavailable(BastionError):
    """A region's database cannot be reached. Only that region's requests fail."""

    status = 503
    slug = "region-unavailable"
    title = "Region unavailable"

    def __init__(self, region: str) -> None:
        super().__init__(f"region {region!r} is unavailable; retry later")
        self.region = region


class ResidencyViolation(BastionError):
    """A row's stored region disagrees with the database it was read from.

    This is corruption or a bug, never a client error; the record is not returned.
    """

    status = 500
    slug = "residency-violation"
    title = "Residency violation"
