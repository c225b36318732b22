"""A realistic demo data set, written through the record pipeline like any client.

Seeds each region once (a region that already has accounts is left alone):
accounts with contacts, leads (one converted), opportunities across the stages,
activities and support cases. Names and numbers come from a fixed seed, so every
fresh install shows the same data.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta
from typing import Any

from bastion.crm.listing import ListQuery
from bastion.principals.caller import Caller
from bastion.principals.tokens import Principal
from bastion.state import State

_COMPANIES = {
    "eu": [
        ("Nordlicht Energie GmbH", "nordlicht-energie.de", "DE", "Berlin", "EUR", "Energy"),
        ("Atelier Lumière SAS", "atelier-lumiere.fr", "FR", "Lyon", "EUR", "Manufacturing"),
        ("Polderveld Logistiek BV", "polderveld.nl", "NL", "Rotterdam", "EUR", "Logistics"),
        ("Vinhos do Douro Lda", "vinhosdodouro.pt", "PT", "Porto", "EUR", "Food & Beverage"),
        ("Kuusi Software Oy", "kuusi.fi", "FI", "Tampere", "EUR", "Software"),
    ],
    "us": [
        ("Cascade Outfitters Inc", "cascade-outfitters.com", "US", "Portland", "USD", "Retail"),
        ("Lone Star Analytics LLC", "lonestar-analytics.com", "US", "Austin", "USD", "Software"),
        ("Harborview Health Partners", "harborviewhealth.org", "US", "Seattle", "USD", "Health"),
        ("Great Lakes Freight Co", "glfreight.com", "US", "Chicago", "USD", "Logistics"),
        ("Sunbelt Solar Corp", "sunbeltsolar.com", "US", "Phoenix", "USD", "Energy"),
    ],
}
_PEOPLE = {
    "eu": [
        ("Anna", "Schmidt", "+4930"),
        ("Lukas", "Weber", "+4940"),
        ("Camille", "Dubois", "+3314"),
        ("Sanne", "de Vries", "+3120"),
        ("João", "Ferreira", "+35121"),
        ("Aino", "Virtanen", "+3589"),
        ("Marta", "Kowalska", "+4822"),
        ("Luca", "Rossi", "+3906"),
    ],
    "us": [
        ("Emily", "Johnson", "+1503"),
        ("Michael", "Garcia", "+1512"),
        ("Olivia", "Martinez", "+1206"),
        ("James", "Brown", "+1312"),
        ("Sophia", "Davis", "+1602"),
        ("Daniel", "Miller", "+1415"),
        ("Ava", "Wilson", "+1617"),
        ("Ethan", "Moore", "+1212"),
    ],
}
_TITLES = ["Head of Operations", "CFO", "IT Director", "Procurement Lead", "VP Sales"]
_STAGES = ["prospecting", "qualification", "proposal", "negotiation", "closed_won"]


def seed(state: State, principal: Principal) -> dict[str, Counter[str]]:
    """Seed every region the principal may write to; returns what was created."""
    created: dict[str, Counter[str]] = {}
    for region in principal.regions:
        created[region] = Counter()
        existing = state.records.list_records(
            Caller(principal), "accounts", ListQuery(filters={}, limit="1", region=region)
        )
        if existing.data:
            continue
        _seed_region(
            state, principal, region, random.Random(f"bastion-demo-{region}"), created[region]
        )
    return created


def _seed_region(
    state: State, principal: Principal, region: str, rng: random.Random, counts: Counter[str]
) -> None:
    records = state.records
    caller = Caller(principal)
    today = state.clock.now().date()

    def create(entity: str, **values: Any) -> dict[str, Any]:
        counts[entity] += 1
        return records.create(caller, entity, {"region": region, **values}).record

    people = list(_PEOPLE[region])
    rng.shuffle(people)
    for index, (name, domain, country, city, currency, industry) in enumerate(_COMPANIES[region]):
        account = create(
            "accounts",
            name=name,
            domain=domain,
            website=f"https://{domain}",
            industry=industry,
            employee_count=rng.randrange(20, 5000),
            annual_revenue=f"{rng.randrange(1, 500) * 100_000}.00",
            currency=currency,
            billing_city=city,
            billing_country=country,
            type="customer" if index % 2 == 0 else "prospect",
        )
        first, last, prefix = people[index]
        contact = create(
            "contacts",
            first_name=first,
            last_name=last,
            email=f"{first.lower()}.{last.lower().replace(' ', '')}@{domain}",
            phone=f"{prefix}{rng.randrange(1_000_000, 9_999_999)}",
            title=rng.choice(_TITLES),
            account_id=account["id"],
            mailing_city=city,
            mailing_country=country,
            email_opt_in=rng.random() < 0.5,
        )
        stage = _STAGES[index % len(_STAGES)]
        opportunity = create(
            "opportunities",
            name=f"{name.split()[0]} — platform rollout",
            account_id=account["id"],
            contact_id=contact["id"],
            stage=stage,
            amount=f"{rng.randrange(5, 250) * 1000}.00",
            currency=currency,
            close_date=(today + timedelta(days=rng.randrange(10, 120))).isoformat(),
            probability={"closed_won": 100}.get(stage, 10 + 20 * (index % 4)),
        )
        create(
            "activities",
            type=rng.choice(["call", "email", "meeting"]),
            subject=f"Discovery with {first}",
            contact_id=contact["id"],
            opportunity_id=opportunity["id"],
            status="completed",
            completed_at=(state.clock.now() - timedelta(days=rng.randrange(1, 30))).isoformat(),
        )
        create(
            "cases",
            subject=f"Invoice question from {name.split()[0]}",
            description="Customer asks for a corrected invoice address.",
            status=rng.choice(["new", "open", "closed"]),
            priority=rng.choice(["low", "medium", "high"]),
            contact_id=contact["id"],
            account_id=account["id"],
        )
    for first, last, prefix in people[len(_COMPANIES[region]) :]:
        create(
            "leads",
            first_name=first,
            last_name=last,
            email=f"{first.lower()}@example.com",
            phone=f"{prefix}{rng.randrange(1_000_000, 9_999_999)}",
            company=f"{last} Consulting",
            status="working",
            source=rng.choice(["web", "event", "referral"]),
            score=rng.randrange(10, 95),
        )
    leads = records.list_records(caller, "leads", ListQuery(filters={}, region=region))
    if leads.data:
        conversion = records.convert_lead(
            caller,
            leads.data[0]["id"],
            {"opportunity": {"name": "Converted lead — pilot", "amount": "12000.00"}},
        )
        counts["conversions"] += 1 if conversion.contact else 0
