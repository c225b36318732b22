"""The field catalog: the one description of every CRM entity and field.

Validation (`crm.schemas`), the tables (`crm.tables`), the OpenAPI document, the
policy's field names and, later, encryption and data subjects' requests are all
derived from these declarations. Adding a field here is the whole job of adding a
field (plus its migration, which `bastion db check` demands).

This module is a leaf: it imports nothing from Bastion, so every domain (policy,
crypto, audit, dsr) may import it — the one exception to "domains import downward
only", because the catalog is the vocabulary they all share.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

FieldType = Literal[
    "string",
    "text",
    "email",
    "phone",
    "url",
    "country",
    "currency",
    "integer",
    "decimal",
    "boolean",
    "date",
    "datetime",
    "enum",
    "ref",
    "principal",
    "team",
    "json",
]
Classification = Literal["public", "internal", "personal", "sensitive"]

# Types whose stored value orders meaningfully and cheaply (sort, keyset cursors).
_SORTABLE_TYPES = frozenset(
    {"string", "email", "country", "currency", "integer", "decimal", "date", "datetime", "enum"}
)
_UNFILTERABLE_TYPES = frozenset({"text", "json"})


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of one entity.

    `encrypted` fields will be stored as ciphertext under the data subject's key;
    they can never be sorted or range-filtered, only matched exactly through a
    blind index when `searchable`. `category` is the data category the policy and
    data subjects' requests speak of (e.g. `contact.email`, `health`).
    """

    name: str
    type: FieldType
    description: str
    required: bool = False
    classification: Classification = "internal"
    category: str = "business"
    encrypted: bool = False
    searchable: bool = False
    max_length: int | None = None
    minimum: Decimal | int | None = None
    maximum: Decimal | int | None = None
    scale: int | None = None
    choices: tuple[str, ...] = ()
    ref: str | None = None
    read_only: bool = False
    nullable: bool = True
    # Also store a blind index of the value's phonetic code (duplicate detection's
    # blocking key for names that sound alike; see quality.phonetic for its leakage).
    phonetic: bool = False

    @property
    def personal(self) -> bool:
        return self.classification in ("personal", "sensitive")

    @property
    def sortable(self) -> bool:
        return not self.encrypted and self.type in _SORTABLE_TYPES

    @property
    def index_column(self) -> str | None:
        """The column of this field's blind index (encrypted searchable fields only)."""
        return f"{self.name}_bidx" if self.encrypted and self.searchable else None

    @property
    def phonetic_column(self) -> str | None:
        """The column of this field's phonetic blind index (encrypted fields only)."""
        return f"{self.name}_pidx" if self.encrypted and self.phonetic else None

    @property
    def filterable(self) -> bool:
        if self.encrypted:
            return self.searchable
        return self.type not in _UNFILTERABLE_TYPES


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """Records the law requires to be kept, even when a data subject asks for erasure.

    A record of the entity whose `field` holds one of `values` is retained for
    `years`; erasure keeps it (its content re-sealed under a retention key of the
    request, so shredding the person's key does not destroy it; its links to the
    person left pointing at the person's erased shell) and says why.
    """

    code: str  # a short code for results and certificates, e.g. "commercial-record"
    reason: str  # the legal basis, for people
    field: str
    values: tuple[str, ...]
    years: int


@dataclass(frozen=True, slots=True)
class EntitySpec:
    """One CRM entity: its API name, id prefix, table and fields (in API order)."""

    name: str
    singular: str
    prefix: str
    description: str
    fields: tuple[FieldSpec, ...]
    data_subject: bool = False
    # At least one of these fields must be set (e.g. an activity must be about something).
    require_one_of: tuple[str, ...] = ()
    # Whose data key encrypts this record's encrypted fields: the first of these links
    # that is set (the person an activity or case is about), else the record itself.
    # Erasing that person then shreds these fields too.
    key_subject_from: tuple[str, ...] = ()
    retention: tuple[RetentionRule, ...] = ()
    _by_name: Mapping[str, FieldSpec] = field(init=False, repr=False, compare=False)
    _encrypted: tuple[FieldSpec, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {f.name: f for f in self.fields})
        # Asked for every record read and written: computed once.
        object.__setattr__(self, "_encrypted", tuple(f for f in self.fields if f.encrypted))

    @property
    def table_name(self) -> str:
        return self.name

    def field(self, name: str) -> FieldSpec | None:
        return self._by_name.get(name)

    def writable_fields(self) -> Iterator[FieldSpec]:
        return (f for f in self.fields if not f.read_only)

    @property
    def encrypted_fields(self) -> tuple[FieldSpec, ...]:
        return self._encrypted


# Fields every entity has, after its own. `id`, `region`, `version`, `created_at` and
# `updated_at` are system columns (see SYSTEM_FIELDS), never written by clients.
def _common() -> tuple[FieldSpec, ...]:
    return (
        FieldSpec(
            "owner_id",
            "principal",
            "Principal who owns the record (defaults to its creator).",
            max_length=64,
        ),
        FieldSpec("team_id", "team", "Team the record belongs to.", max_length=64),
        FieldSpec(
            "custom",
            "json",
            "Custom fields: an object of up to 50 keys, scalar values.",
            classification="internal",
        ),
    )


SYSTEM_FIELDS = ("id", "region", "version", "created_at", "updated_at")


def _name_fields(required_last: bool) -> tuple[FieldSpec, ...]:
    return (
        FieldSpec(
            "first_name",
            "string",
            "Given name.",
            max_length=100,
            classification="personal",
            category="contact.name",
            encrypted=True,
        ),
        FieldSpec(
            "last_name",
            "string",
            "Family name.",
            required=required_last,
            max_length=100,
            classification="personal",
            category="contact.name",
            encrypted=True,
            searchable=True,
            phonetic=True,
        ),
        FieldSpec(
            "email",
            "email",
            "Email address (matched case-insensitively through its blind index).",
            max_length=254,
            classification="personal",
            category="contact.email",
            encrypted=True,
            searchable=True,
        ),
        FieldSpec(
            "phone",
            "phone",
            "Phone number in E.164 form, e.g. +4930123456.",
            max_length=16,
            classification="personal",
            category="contact.phone",
            encrypted=True,
            searchable=True,
        ),
    )


ACCOUNTS = EntitySpec(
    name="accounts",
    singular="account",
    prefix="acc",
    description="Organisations you do business with.",
    fields=(
        FieldSpec("name", "string", "Legal or trading name.", required=True, max_length=200),
        FieldSpec("domain", "string", "Primary web domain, e.g. example.com.", max_length=253),
        FieldSpec("website", "url", "Website URL.", max_length=2048),
        FieldSpec("industry", "string", "Industry.", max_length=100),
        FieldSpec(
            "employee_count", "integer", "Number of employees.", minimum=0, maximum=10_000_000
        ),
        FieldSpec(
            "annual_revenue",
            "decimal",
            "Annual revenue in the account's currency.",
            minimum=Decimal(0),
            maximum=Decimal("999999999999999.99"),
            scale=2,
        ),
        FieldSpec("currency", "currency", "ISO 4217 currency code.", max_length=3),
        FieldSpec("phone", "phone", "Main switchboard number (E.164).", max_length=16),
        FieldSpec("billing_street", "string", "Billing street address.", max_length=200),
        FieldSpec("billing_city", "string", "Billing city.", max_length=100),
        FieldSpec("billing_postal_code", "string", "Billing postal code.", max_length=20),
        FieldSpec("billing_country", "country", "ISO 3166-1 alpha-2 country.", max_length=2),
        FieldSpec(
            "tax_id",
            "string",
            "VAT or tax identification number.",
            max_length=50,
            classification="sensitive",
            category="financial.tax_id",
            encrypted=True,
        ),
        FieldSpec(
            "type",
            "enum",
            "Relationship type.",
            choices=("prospect", "customer", "partner", "vendor", "other"),
            max_length=16,
        ),
        FieldSpec("description", "text", "Free-text description.", max_length=10_000),
        *_common(),
    ),
)

CONTACTS = EntitySpec(
    name="contacts",
    singular="contact",
    prefix="con",
    description="People at accounts. Each contact is a data subject.",
    data_subject=True,
    fields=(
        *_name_fields(required_last=True),
        FieldSpec(
            "mobile",
            "phone",
            "Mobile number in E.164 form.",
            max_length=16,
            classification="personal",
            category="contact.phone",
            encrypted=True,
            searchable=True,
        ),
        FieldSpec(
            "title",
            "string",
            "Job title.",
            max_length=128,
            classification="personal",
            category="contact.employment",
        ),
        FieldSpec("department", "string", "Department.", max_length=100),
        FieldSpec("account_id", "ref", "Account the contact works at.", ref="accounts"),
        FieldSpec(
            "mailing_street",
            "string",
            "Mailing street address.",
            max_length=200,
            classification="personal",
            category="contact.address",
            encrypted=True,
        ),
        FieldSpec(
            "mailing_city",
            "string",
            "Mailing city.",
            max_length=100,
            classification="personal",
            category="contact.address",
        ),
        FieldSpec(
            "mailing_postal_code",
            "string",
            "Mailing postal code.",
            max_length=20,
            classification="personal",
            category="contact.address",
            encrypted=True,
        ),
        FieldSpec(
            "mailing_country",
            "country",
            "ISO 3166-1 alpha-2 country.",
            max_length=2,
            classification="personal",
            category="contact.address",
        ),
        FieldSpec(
            "birthdate",
            "date",
            "Date of birth.",
            classification="sensitive",
            category="personal.birthdate",
            encrypted=True,
        ),
        FieldSpec(
            "lead_source",
            "enum",
            "Where the contact came from.",
            choices=("web", "referral", "event", "partner", "advertising", "outbound", "other"),
            max_length=16,
        ),
        FieldSpec(
            "do_not_contact",
            "boolean",
            "The person objected to being contacted (GDPR Art. 21).",
            classification="personal",
            category="consent",
        ),
        FieldSpec(
            "email_opt_in",
            "boolean",
            "Consent to marketing email.",
            classification="personal",
            category="consent",
        ),
        *_common(),
    ),
)

LEAD_STATUSES = ("new", "working", "nurturing", "qualified", "unqualified", "converted")

LEADS = EntitySpec(
    name="leads",
    singular="lead",
    prefix="led",
    description="Prospective customers not yet qualified. Each lead is a data subject.",
    data_subject=True,
    fields=(
        *_name_fields(required_last=True),
        FieldSpec("company", "string", "Company name.", required=True, max_length=200),
        FieldSpec(
            "title",
            "string",
            "Job title.",
            max_length=128,
            classification="personal",
            category="contact.employment",
        ),
        FieldSpec("industry", "string", "Industry.", max_length=100),
        FieldSpec(
            "country",
            "country",
            "ISO 3166-1 alpha-2 country.",
            max_length=2,
            classification="personal",
            category="contact.address",
        ),
        FieldSpec(
            "status",
            "enum",
            "Qualification status; `converted` is set only by conversion.",
            choices=LEAD_STATUSES,
            max_length=16,
        ),
        FieldSpec(
            "source",
            "enum",
            "Lead source.",
            choices=("web", "referral", "event", "partner", "advertising", "outbound", "other"),
            max_length=16,
        ),
        FieldSpec("score", "integer", "Lead score, 0-100.", minimum=0, maximum=100),
        FieldSpec(
            "email_opt_in",
            "boolean",
            "Consent to marketing email.",
            classification="personal",
            category="consent",
        ),
        FieldSpec("converted_at", "datetime", "When the lead was converted.", read_only=True),
        FieldSpec(
            "converted_contact_id",
            "ref",
            "Contact created by conversion.",
            ref="contacts",
            read_only=True,
        ),
        FieldSpec(
            "converted_account_id",
            "ref",
            "Account used or created by conversion.",
            ref="accounts",
            read_only=True,
        ),
        FieldSpec(
            "converted_opportunity_id",
            "ref",
            "Opportunity created by conversion.",
            ref="opportunities",
            read_only=True,
        ),
        *_common(),
    ),
)

OPPORTUNITY_STAGES = (
    "prospecting",
    "qualification",
    "proposal",
    "negotiation",
    "closed_won",
    "closed_lost",
)

OPPORTUNITIES = EntitySpec(
    name="opportunities",
    singular="opportunity",
    prefix="opp",
    description="Potential deals with an account.",
    fields=(
        FieldSpec("name", "string", "Deal name.", required=True, max_length=200),
        FieldSpec("account_id", "ref", "Account the deal is with.", required=True, ref="accounts"),
        FieldSpec("contact_id", "ref", "Primary contact.", ref="contacts"),
        FieldSpec(
            "stage",
            "enum",
            "Sales stage.",
            required=True,
            choices=OPPORTUNITY_STAGES,
            max_length=16,
        ),
        FieldSpec(
            "amount",
            "decimal",
            "Deal amount in `currency`.",
            minimum=Decimal(0),
            maximum=Decimal("999999999999999.99"),
            scale=2,
        ),
        FieldSpec("currency", "currency", "ISO 4217 currency code.", max_length=3),
        FieldSpec("close_date", "date", "Expected or actual close date."),
        FieldSpec("probability", "integer", "Win probability in percent.", minimum=0, maximum=100),
        FieldSpec("next_step", "string", "Next step.", max_length=255),
        FieldSpec(
            "lost_reason",
            "enum",
            "Why the deal was lost.",
            choices=("price", "competitor", "no_budget", "no_decision", "timing", "other"),
            max_length=16,
        ),
        FieldSpec("description", "text", "Free-text description.", max_length=10_000),
        *_common(),
    ),
)

ACTIVITIES = EntitySpec(
    name="activities",
    singular="activity",
    prefix="act",
    description="Calls, emails, meetings, tasks and notes about a person, account or deal.",
    require_one_of=("contact_id", "lead_id", "account_id", "opportunity_id"),
    key_subject_from=("contact_id", "lead_id", "account_id"),
    retention=(
        RetentionRule(
            code="commercial-correspondence",
            reason="business e-mails are commercial correspondence, kept 6 years "
            "(e.g. HGB §257(1) no. 2 and (4); GDPR Art. 17(3)(b))",
            field="type",
            values=("email",),
            years=6,
        ),
    ),
    fields=(
        FieldSpec(
            "type",
            "enum",
            "Kind of activity.",
            required=True,
            choices=("call", "email", "meeting", "task", "note"),
            max_length=16,
        ),
        FieldSpec("subject", "string", "Short subject line.", required=True, max_length=255),
        FieldSpec(
            "body",
            "text",
            "Notes, email body or call summary; may describe the person.",
            max_length=100_000,
            classification="personal",
            category="communication",
            encrypted=True,
        ),
        FieldSpec(
            "direction",
            "enum",
            "Inbound or outbound.",
            choices=("inbound", "outbound"),
            max_length=16,
        ),
        FieldSpec(
            "status",
            "enum",
            "Task status.",
            choices=("planned", "completed", "cancelled"),
            max_length=16,
        ),
        FieldSpec("due_at", "datetime", "When it is due or scheduled."),
        FieldSpec("completed_at", "datetime", "When it was completed."),
        FieldSpec("duration_minutes", "integer", "Duration.", minimum=0, maximum=100_000),
        FieldSpec("contact_id", "ref", "Contact it concerns.", ref="contacts"),
        FieldSpec("lead_id", "ref", "Lead it concerns.", ref="leads"),
        FieldSpec("account_id", "ref", "Account it concerns.", ref="accounts"),
        FieldSpec("opportunity_id", "ref", "Opportunity it concerns.", ref="opportunities"),
        *_common(),
    ),
)

CASES = EntitySpec(
    name="cases",
    singular="case",
    prefix="cas",
    description="Customer service cases.",
    key_subject_from=("contact_id", "account_id"),
    fields=(
        FieldSpec("subject", "string", "Short summary.", required=True, max_length=255),
        FieldSpec(
            "description",
            "text",
            "What the customer reported; may describe the person.",
            max_length=100_000,
            classification="personal",
            category="communication",
            encrypted=True,
        ),
        FieldSpec(
            "status",
            "enum",
            "Case status.",
            choices=("new", "open", "pending", "resolved", "closed"),
            max_length=16,
        ),
        FieldSpec(
            "priority",
            "enum",
            "Priority.",
            choices=("low", "medium", "high", "urgent"),
            max_length=16,
        ),
        FieldSpec(
            "origin", "enum", "Channel.", choices=("email", "phone", "web", "chat"), max_length=16
        ),
        FieldSpec("contact_id", "ref", "Contact who raised the case.", ref="contacts"),
        FieldSpec("account_id", "ref", "Account the case belongs to.", ref="accounts"),
        FieldSpec("closed_at", "datetime", "When the case was closed."),
        FieldSpec(
            "resolution",
            "text",
            "How it was resolved.",
            max_length=10_000,
            classification="personal",
            category="communication",
            encrypted=True,
        ),
        *_common(),
    ),
)

ENTITIES: Mapping[str, EntitySpec] = {
    spec.name: spec for spec in (ACCOUNTS, CONTACTS, LEADS, OPPORTUNITIES, ACTIVITIES, CASES)
}
ENTITIES_BY_PREFIX: Mapping[str, EntitySpec] = {spec.prefix: spec for spec in ENTITIES.values()}


def entity(name: str) -> EntitySpec:
    """The spec of entity `name`; KeyError if there is none."""
    return ENTITIES[name]
