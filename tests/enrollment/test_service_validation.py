"""Enrollment's validation before anything reaches Temporal or the database (no I/O).

Each refusal has its own code (docs/enrollment.md): a bad address, phone, country, locale or
zone; consents missing or for an old version; a plan, interval or currency not offered; a card
number where a token belongs; a code that is not 6 digits; a caller without the token or the
permission. The quote is priced by the subscription's own code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import pytest

from models.calendar import Interval
from models.catalog import default_catalog
from models.enrollment import PlanChoice, address_key
from models.errors import ErrorCode, OmsError
from models.identity import Principal, Role
from starter.enrollment.legal import current_privacy, current_terms, parse_document
from starter.enrollment.service import (
    EnrollmentCaller,
    EnrollmentService,
    StartEnrollment,
    check_code,
    check_payment_method,
    plan_comparison,
    token_hash,
    validate_start,
)

KEY = b"k" * 32
NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def request(**changes: Any) -> StartEnrollment:
    fields: dict[str, Any] = {
        "email": "ada@example.com",
        "name": "Ada",
        "plan_id": "pro",
        "interval": "monthly",
        "currency": "USD",
        "terms_version": current_terms().version,
        "privacy_version": current_privacy().version,
    }
    fields.update(changes)
    return StartEnrollment(**fields)


def refused(code: ErrorCode, **changes: Any) -> str:
    with pytest.raises(OmsError) as err:
        validate_start(default_catalog(), request(**changes))
    assert err.value.code == code, err.value.message
    return err.value.message


def test_a_valid_sign_up_is_normalized() -> None:
    fields = validate_start(
        default_catalog(),
        request(
            email="  Ada@Example.COM ",
            phone="030 1234567",
            country="de",
            locale="de_CH",
            timezone="Europe/Berlin",
            currency="usd",
            interval="Monthly",
        ),
    )
    assert fields["email"] == "Ada@example.com"
    assert fields["phone"] == "+49301234567"
    assert fields["country"] == "DE"
    assert fields["locale"] == "de-CH"
    assert fields["choice"] == PlanChoice(plan_id="pro", interval=Interval.MONTHLY, currency="USD")
    consents = fields["consents"]
    assert consents.terms_hash == current_terms().sha256
    assert consents.privacy_hash == current_privacy().sha256
    assert consents.marketing is False  # off unless asked for


def test_marketing_is_a_separate_opt_in() -> None:
    assert validate_start(default_catalog(), request(marketing=True))["consents"].marketing


@pytest.mark.parametrize("email", ["ada", "ada@", "@example.com", "a b@example.com", "ada@x.test"])
def test_bad_email_is_email_invalid(email: str) -> None:
    refused(ErrorCode.EMAIL_INVALID, email=email)


@pytest.mark.parametrize(
    ("phone", "country"),
    [("12", None), ("not a phone", "US"), ("+1 555", None), ("030 1234567", None)],
)
def test_bad_phone_is_phone_invalid(phone: str, country: str | None) -> None:
    refused(ErrorCode.PHONE_INVALID, phone=phone, country=country)


def test_an_international_phone_needs_no_country() -> None:
    fields = validate_start(default_catalog(), request(phone="+1 650-253-0000"))
    assert fields["phone"] == "+16502530000"


@pytest.mark.parametrize("country", ["XX", "D1", "1"])
def test_bad_country_is_refused(country: str) -> None:
    refused(ErrorCode.INVALID_REQUEST, country=country)


def test_unknown_locale_is_refused() -> None:
    refused(ErrorCode.INVALID_REQUEST, locale="xx-notalocale")


def test_unknown_timezone_is_refused() -> None:
    refused(ErrorCode.INVALID_TIMEZONE, timezone="Mars/Olympus")


def test_missing_consent_names_the_documents_to_show() -> None:
    message = refused(ErrorCode.CONSENT_REQUIRED, terms_version="")
    assert current_terms().version in message and "oms enroll terms" in message


def test_an_old_privacy_version_is_consent_required() -> None:
    message = refused(ErrorCode.CONSENT_REQUIRED, privacy_version="2020-01-01")
    assert "privacy notice" in message and "terms of service" not in message


def test_unknown_plan_is_not_offered_and_lists_the_plans() -> None:
    message = refused(ErrorCode.PLAN_NOT_OFFERED, plan_id="platinum")
    assert "starter" in message and "pro" in message


def test_an_interval_or_currency_not_priced_is_not_offered() -> None:
    message = refused(ErrorCode.PLAN_NOT_OFFERED, plan_id="starter", interval="quarterly")
    assert "monthly in USD" in message
    refused(ErrorCode.PLAN_NOT_OFFERED, plan_id="starter", currency="KWD")
    refused(ErrorCode.PLAN_NOT_OFFERED, plan_id="starter", currency="ZZZ")


def test_extra_fields_are_refused() -> None:
    with pytest.raises(ValueError):
        StartEnrollment(**{**request().model_dump(), "tenant_id": "someone-else"})


@pytest.mark.parametrize("pm", ["4242424242424242", "4242 4242 4242 4242", "4242-4242-4242-4242"])
def test_card_numbers_are_refused(pm: str) -> None:
    with pytest.raises(OmsError) as err:
        check_payment_method(pm)
    assert err.value.code == ErrorCode.CARD_NUMBER_REFUSED
    assert pm not in err.value.message


@pytest.mark.parametrize(
    ("pm", "code"),
    [("", ErrorCode.PAYMENT_METHOD_REQUIRED), ("tok_visa", ErrorCode.PAYMENT_METHOD_INVALID)],
)
def test_other_payment_methods_are_refused(pm: str, code: ErrorCode) -> None:
    with pytest.raises(OmsError) as err:
        check_payment_method(pm)
    assert err.value.code == code


def test_a_token_is_accepted() -> None:
    assert check_payment_method(" pm_card_visa ") == "pm_card_visa"


@pytest.mark.parametrize("code", ["", "12345", "1234567", "12a456", "\uff11" * 6])
def test_a_code_is_six_digits(code: str) -> None:
    with pytest.raises(OmsError) as err:
        check_code(code)
    assert err.value.code == ErrorCode.CODE_INVALID


def test_leading_zeros_are_kept() -> None:
    assert check_code(" 012345 ") == "012345"


def test_the_plan_comparison_has_every_plan_with_prices() -> None:
    rows = plan_comparison(default_catalog(), "usd", "en")
    assert [r["plan_id"] for r in rows] == [p.plan_id for p in default_catalog().plans]
    pro = next(r for r in rows if r["plan_id"] == "pro")
    assert pro["trial_days"] == 14 and pro["features"]
    monthly = next(p for p in pro["prices"] if p["interval"] == "monthly")
    assert monthly == {
        "currency": "USD",
        "interval": "monthly",
        "amount_minor": 3000,
        "amount": "$30.00",
        "offered": True,
    }
    assert all(p["currency"] == "USD" for r in rows for p in r["prices"])
    with pytest.raises(OmsError) as err:
        plan_comparison(default_catalog(), "ZZZ")
    assert err.value.code == ErrorCode.INVALID_CURRENCY


def test_legal_documents_have_versions_and_hashes() -> None:
    terms = current_terms()
    assert terms.version and len(terms.sha256) == 64
    assert not terms.text.startswith("---")
    with pytest.raises(ValueError):
        parse_document("terms", b"# no front matter\n")


# --- the service with fakes: access and the quote -------------------------------------------


@dataclass
class Row:
    id: str
    tenant_id: str
    token_hash: str
    status: str = "awaiting_verification"
    timezone: str = "UTC"
    locale: str = "en"


@dataclass
class FakeStore:
    engine: Any = None
    rows: dict[str, Row] = field(default_factory=dict)

    def create(self, **row: Any) -> None:  # pragma: no cover - not reached here
        raise AssertionError("nothing is written in these tests")

    def get(self, enrollment_id: str) -> Row | None:
        return self.rows.get(enrollment_id)


def service(store: FakeStore | None = None) -> EnrollmentService:
    return EnrollmentService(
        client=None,  # type: ignore[arg-type]  # never reached: these paths stop before Temporal
        store=store or FakeStore(),
        catalog=default_catalog(),
        key=KEY,
        task_queue="tq",
        tenant_id="default",
        clock=lambda: NOW,
    )


def operator(tenant: str = "default", role: Role = Role.OPERATOR) -> Principal:
    return Principal(id=f"op-{tenant}", tenant_id=tenant, role=role, customer_id="c1")


ENR = "enr_00112233445566778899aabbcc"
TOKEN = "enrtok_the-right-token"


def with_row() -> EnrollmentService:
    return service(FakeStore(rows={ENR: Row(ENR, "default", token_hash(KEY, TOKEN))}))


def code_of(svc: EnrollmentService, enrollment_id: str, caller: EnrollmentCaller) -> ErrorCode:
    with pytest.raises(OmsError) as err:
        svc.authorize(enrollment_id, caller)
    return err.value.code


def test_the_token_or_a_managing_principal_of_the_tenant_may_act() -> None:
    svc = with_row()
    assert svc.authorize(ENR, EnrollmentCaller("web", token=TOKEN)).id == ENR
    assert svc.authorize(ENR, EnrollmentCaller("cli", principal=operator())).id == ENR


def test_a_wrong_token_another_tenant_and_an_unknown_id_are_all_not_found() -> None:
    svc = with_row()
    assert code_of(svc, ENR, EnrollmentCaller("web", token="enrtok_wrong")) == ErrorCode.NOT_FOUND
    assert code_of(svc, ENR, EnrollmentCaller("api", principal=operator("other"))) == (
        ErrorCode.NOT_FOUND
    )
    unknown = "enr_ffffffffffffffffffffffffff"
    assert code_of(svc, unknown, EnrollmentCaller("web", token=TOKEN)) == ErrorCode.NOT_FOUND
    assert code_of(svc, "../etc", EnrollmentCaller("web", token=TOKEN)) == ErrorCode.NOT_FOUND


def test_no_credential_is_unauthenticated_and_no_permission_forbidden() -> None:
    svc = with_row()
    assert code_of(svc, ENR, EnrollmentCaller("web")) == ErrorCode.UNAUTHENTICATED
    customer = operator(role=Role.CUSTOMER)
    assert code_of(svc, ENR, EnrollmentCaller("api", principal=customer)) == ErrorCode.FORBIDDEN


async def test_validation_refuses_before_anything_is_written_or_started() -> None:
    svc = service()  # its store refuses writes, its client is None
    with pytest.raises(OmsError) as err:
        await svc.start(request(email="nope"), EnrollmentCaller("web"))
    assert err.value.code == ErrorCode.EMAIL_INVALID
    with pytest.raises(OmsError) as err:
        await svc.pay(ENR, "4242424242424242", EnrollmentCaller("web", token=TOKEN))
    assert err.value.code == ErrorCode.CARD_NUMBER_REFUSED
    with pytest.raises(OmsError) as err:
        await with_row().verify(ENR, "12", EnrollmentCaller("web", token=TOKEN))
    assert err.value.code == ErrorCode.CODE_INVALID


async def test_a_principal_without_the_permission_may_not_start() -> None:
    with pytest.raises(OmsError) as err:
        await service().start(
            request(), EnrollmentCaller("api", principal=operator(role=Role.CUSTOMER))
        )
    assert err.value.code == ErrorCode.FORBIDDEN


def test_origin_comes_from_the_caller() -> None:
    enrollee = EnrollmentCaller("web", token=TOKEN, ip="203.0.113.9", user_agent="x" * 999)
    origin = enrollee.origin()
    assert (origin.actor, origin.channel, origin.ip) == ("enrollee", "web", "203.0.113.9")
    assert origin.user_agent is not None and len(origin.user_agent) == 300
    assert EnrollmentCaller("cli", principal=operator()).origin().actor == "op-default"


def test_quote_with_a_trial_charges_nothing_today() -> None:
    q = service().price(
        PlanChoice(plan_id="pro", interval=Interval.MONTHLY, currency="EUR"),
        timezone="Europe/Berlin",
        locale="de",
        now=NOW,
    )
    assert q["due_today"]["amount_minor"] == 0
    assert q["trial_end"] == date(2026, 12, 17).isoformat()
    assert q["first_charge"]["date"] == "2026-12-17"
    assert q["first_charge"]["amount_minor"] == 2800
    assert q["first_charge"]["amount"] == "28,00\xa0€"
    assert q["renewal"] == {"date": "2027-01-17", "amount_minor": 2800, "amount": "28,00\xa0€"}


def test_quote_without_a_trial_charges_the_first_period_today() -> None:
    q = service().price(
        PlanChoice(plan_id="starter", interval=Interval.YEARLY, currency="USD"),
        timezone="UTC",
        locale="en",
        now=NOW,
    )
    assert q["trial_end"] is None
    assert q["due_today"] == {"amount_minor": 9000, "amount": "$90.00"}
    assert q["first_charge"]["date"] == "2026-12-03" and not q["first_charge"]["prorated"]
    assert q["renewal"]["date"] == "2027-12-03"


def test_address_keys_ignore_case_and_differ_by_tenant() -> None:
    assert address_key(KEY, "t", "Ada@Example.com") == address_key(KEY, "t", "ada@example.com")
    assert address_key(KEY, "t", "ada@example.com") != address_key(KEY, "u", "ada@example.com")
