"""Rendering notices as e-mails: every kind, both bodies, localized amounts and dates."""

from __future__ import annotations

import re
from collections.abc import Mapping

import pytest

from activities.notify.errors import RenderError
from activities.notify.render import KINDS, format_amount, render_email

LINKS = {
    "portal": "https://billing.example.test/portal",
    "update_payment_method": "https://billing.example.test/portal/payment-method?subscription=sub_1&x=1",
}

# kind -> (data as the workflow writes it, fragments the subject must carry)
SAMPLES: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "enrollment_code": ({"code": "482913", "valid_minutes": "10"}, ("482913",)),
    "enrollment_reminder": (
        {
            "resume_url": "https://billing.example.test/portal/enroll?enrollment=enr_1",
            "plan_id": "pro-monthly",
            "plan_name": "Pro",
            "expires_at": "2026-03-02T09:00:00+00:00",
        },
        ("Pro",),
    ),
    "welcome": (
        {
            "plan_id": "pro-monthly",
            "plan_name": "Pro",
            "trial_end": "2026-03-15",
            "first_charge_date": "2026-03-15",
            "amount_minor": "2900",
            "currency": "USD",
            "sign_in_url": "https://billing.example.test/portal/sign-in?token=sil_x",
        },
        ("Pro",),
    ),
    "trial_ending": (
        {
            "charge_date": "2026-03-15",
            "amount": "$29.00",
            "amount_minor": "2900",
            "currency": "USD",
            "plan_id": "pro-monthly",
        },
        ("$29.00", "March 15, 2026"),
    ),
    "upcoming_charge": (
        {
            "charge_date": "2026-04-01",
            "amount": "$1,234.56",
            "amount_minor": "123456",
            "currency": "USD",
            "plan_id": "team-yearly",
        },
        ("$1,234.56", "April 1, 2026"),
    ),
    "payment_succeeded": (
        {
            "invoice_id": "in_7f3a",
            "amount": "$29.00",
            "amount_minor": "2900",
            "currency": "USD",
            "plan_id": "pro-monthly",
            "period_start": "2026-03-01",
            "period_end": "2026-04-01",
        },
        ("$29.00", "in_7f3a"),
    ),
    "payment_failed": (
        {
            "invoice_id": "in_7f3a",
            "amount": "$29.00",
            "amount_minor": "2900",
            "currency": "USD",
            "plan_id": "pro-monthly",
            "next_retry_at": "2026-03-04T09:00:00+00:00",
            "action": "none",
        },
        ("$29.00",),
    ),
    "dunning_final": (
        {
            "invoice_id": "in_7f3a",
            "amount_minor": "2900",
            "currency": "USD",
            "plan_id": "pro-monthly",
            "final_action": "cancel",
            "action_date": "2026-03-22",
        },
        ("$29.00", "March 22, 2026"),
    ),
    "canceled": (
        {
            "mode": "at_period_end",
            "plan_id": "pro-monthly",
            "effective_date": "2026-04-01",
        },
        ("pro-monthly", "canceled"),
    ),
    "change_applied": (
        {
            "plan_id": "team-monthly",
            "previous_plan_id": "pro-monthly",
            "quantity": "5",
            "previous_quantity": "1",
            "effective_date": "2026-03-10",
            "amount_minor": "14500",
            "currency": "USD",
        },
        ("team-monthly",),
    ),
    "change_scheduled": (
        {
            "plan_id": "basic-monthly",
            "previous_plan_id": "pro-monthly",
            "effective_date": "2026-04-01",
            "amount_minor": "900",
            "currency": "USD",
        },
        ("April 1, 2026",),
    ),
    "invoice_issued": (
        {
            "invoice_id": "in_9c01",
            "amount_minor": "480000",
            "currency": "EUR",
            "due_date": "2026-04-30",
            "plan_id": "enterprise-yearly",
            "period_start": "2026-04-01",
            "period_end": "2027-04-01",
        },
        ("€4,800.00", "April 30, 2026", "in_9c01"),
    ),
    "approval_requested": (
        {
            "request_id": "req_51",
            "groups": "finance",
            "summary": "refund $420.00 to cus_9",
            "deadline": "2026-03-06T17:00:00+00:00",
        },
        ("refund $420.00 to cus_9",),
    ),
    "approval_reminder": (
        {
            "request_id": "req_51",
            "groups": "finance",
            "summary": "refund $420.00 to cus_9",
            "deadline": "2026-03-06T17:00:00+00:00",
        },
        ("March 6, 2026", "refund $420.00"),
    ),
    "approval_escalated": (
        {
            "request_id": "req_51",
            "groups": "cfo",
            "summary": "refund $420.00 to cus_9",
            "deadline": "2026-03-06T17:00:00+00:00",
        },
        ("Escalated", "March 6, 2026"),
    ),
    "ops_attention": (
        {
            "code": "GATEWAY_REFUSED",
            "step": "renewal",
            "activity": "charge",
            "message": "card_declined: the gateway refused the charge",
            "retry_at": "2026-03-04T09:30:00+00:00",
        },
        ("renewal", "GATEWAY_REFUSED"),
    ),
    "ops_collections": (
        {"invoice_id": "in_fee1", "amount": "$150.00", "decline_code": "insufficient_funds"},
        ("$150.00", "in_fee1"),
    ),
}


def test_every_registered_kind_has_a_sample() -> None:
    assert set(SAMPLES) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_kind_renders_in_english_with_subject_greeting_and_footer(kind: str) -> None:
    data, fragments = SAMPLES[kind]
    mail = render_email(kind, data, links=LINKS)

    for fragment in fragments:
        assert fragment in mail.subject
    assert "\n" not in mail.subject and "{" not in mail.subject
    # Every value the subject carries is in both bodies too; the footer says why.
    for fragment in fragments:
        if fragment not in ("canceled", "Escalated"):
            assert fragment in mail.text and fragment in mail.html
    assert "because" in mail.text or "operations address" in mail.text
    assert mail.text.endswith("\n") and "{{" not in mail.text and "{%" not in mail.text
    assert mail.html.startswith("<!DOCTYPE html>") and '<html lang="en">' in mail.html
    if KINDS[kind].audience == "customer":
        assert mail.text.startswith("Hello,")


def test_upcoming_charge_reads_like_a_notice() -> None:
    data, _ = SAMPLES["upcoming_charge"]
    mail = render_email("upcoming_charge", data, links=LINKS)

    assert mail.subject == "Upcoming charge of $1,234.56 on April 1, 2026"
    assert "Your team-yearly subscription renews on April 1, 2026." in mail.text
    assert "Amount:       $1,234.56" in mail.text
    assert f"Manage your subscription:\n{LINKS['portal']}" in mail.text
    # The footer does not repeat the link the button already gives.
    assert mail.text.count(LINKS["portal"]) == 1


def test_payment_failed_links_to_the_update_card_page_and_says_when_it_retries() -> None:
    data, _ = SAMPLES["payment_failed"]
    mail = render_email("payment_failed", data, links=LINKS)

    assert "We will try again on March 4, 2026, 9:00\u202fAM UTC." in mail.text
    assert f"Update your payment method:\n{LINKS['update_payment_method']}" in mail.text
    # In HTML the link is an attribute: & escaped as &amp;.
    escaped = LINKS["update_payment_method"].replace("&", "&amp;")
    assert f'href="{escaped}"' in mail.html


def test_payment_failed_after_a_hard_decline_asks_for_a_new_card_without_a_retry_date() -> None:
    data = {**SAMPLES["payment_failed"][0], "action": "update_payment_method"}
    mail = render_email("payment_failed", data, links=LINKS)

    assert "we will not retry it" in mail.text
    assert "Next attempt" not in mail.text


def test_instants_are_shown_in_the_readers_timezone() -> None:
    data = {**SAMPLES["payment_failed"][0], "timezone": "America/New_York"}
    mail = render_email("payment_failed", data, links=LINKS)

    assert "March 4, 2026, 4:00\u202fAM EST" in mail.text


@pytest.mark.parametrize(
    ("mode", "sentence"),
    [
        ("now", "was canceled on April 1, 2026."),
        ("at_period_end", "ended on April 1, 2026, at the end of its billing period"),
        ("nonpayment", "because we could not collect its payment"),
    ],
)
def test_canceled_says_how_it_ended(mode: str, sentence: str) -> None:
    data = {**SAMPLES["canceled"][0], "mode": mode, "reason": "too expensive"}
    mail = render_email("canceled", data)

    assert sentence in mail.text
    assert ("too expensive" in mail.text) is (mode != "nonpayment")


def test_values_from_a_notice_are_escaped_in_html_but_not_in_text() -> None:
    data = {
        **SAMPLES["approval_requested"][0],
        "summary": '<script>alert("x")</script> & <b>more</b>',
    }
    mail = render_email("approval_requested", data)

    assert "<script>" not in mail.html and "<b>more</b>" not in mail.html
    escaped = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;more&lt;/b&gt;"
    assert escaped in mail.html
    assert '<script>alert("x")</script> & <b>more</b>' in mail.text
    assert mail.subject == 'Approval needed: <script>alert("x")</script> & <b>more</b>'


def test_line_breaks_in_values_never_reach_the_subject() -> None:
    data = {**SAMPLES["approval_requested"][0], "summary": "refund\r\nBcc: victim@example.test"}
    mail = render_email("approval_requested", data)

    assert mail.subject == "Approval needed: refund Bcc: victim@example.test"


def test_german_formats_amounts_and_dates_the_german_way() -> None:
    data = {
        "charge_date": "2026-03-03",
        "amount_minor": "123456",
        "currency": "EUR",
        "plan_id": "pro",
    }
    mail = render_email("upcoming_charge", data, locale="de", links=LINKS)

    assert mail.subject == "Anstehende Abbuchung von 1.234,56\xa0€ am 3. März 2026"
    assert "Hallo," in mail.text and "Ihr Abrechnungsteam" in mail.text
    assert '<html lang="de">' in mail.html


@pytest.mark.parametrize(
    ("kind", "word"),
    [
        ("payment_failed", "fehlgeschlagen"),
        ("payment_succeeded", "Zahlungsbestätigung"),
        ("trial_ending", "Testzeitraum"),
    ],
)
def test_german_templates_exist_for_the_main_customer_notices(kind: str, word: str) -> None:
    data = {**SAMPLES[kind][0], "currency": "EUR"}
    mail = render_email(kind, data, locale="de_DE", links=LINKS)

    assert word in mail.subject
    assert "29,00\xa0€" in mail.subject


def test_a_regional_locale_uses_its_language_templates_and_its_own_number_format() -> None:
    data = {**SAMPLES["upcoming_charge"][0], "currency": "CHF"}
    mail = render_email("upcoming_charge", data, locale="de-CH")

    assert mail.subject == "Anstehende Abbuchung von CHF\xa01'234.56 am 1. April 2026"


def test_a_locale_without_templates_falls_back_to_english_words_and_numbers() -> None:
    data = {**SAMPLES["canceled"][0]}
    mail = render_email("canceled", data, locale="de")  # no German canceled template
    assert mail.subject == "Your pro-monthly subscription is canceled"
    assert "April 1, 2026" in mail.text

    fr = render_email("upcoming_charge", SAMPLES["upcoming_charge"][0], locale="fr")
    assert fr.subject == "Upcoming charge of $1,234.56 on April 1, 2026"


def test_an_unknown_locale_renders_in_english() -> None:
    mail = render_email("upcoming_charge", SAMPLES["upcoming_charge"][0], locale="xx-nope")
    assert mail.subject == "Upcoming charge of $1,234.56 on April 1, 2026"


@pytest.mark.parametrize(
    ("amount_minor", "currency", "locale", "expected"),
    [
        (123456, "EUR", "de", "1.234,56\xa0€"),
        (123456, "EUR", "en", "€1,234.56"),
        (1234, "JPY", "en", "¥1,234"),
        (1234, "JPY", "de", "1.234\xa0¥"),
        (1234567, "KWD", "en", "KWD\xa01,234.567"),
        (233, "KWD", "de", "0,233\xa0KWD"),
        (12345, "HUF", "en", "HUF\xa0123.45"),  # CLDR would round HUF to 0 digits; ISO has 2
        (-548, "USD", "en", "-$5.48"),
        (0, "usd", "en", "$0.00"),
    ],
)
def test_amounts_use_the_currencys_iso_minor_unit(
    amount_minor: int, currency: str, locale: str, expected: str
) -> None:
    assert format_amount(amount_minor, currency, locale) == expected


def test_jpy_and_kwd_notices_show_whole_yen_and_three_decimal_fils() -> None:
    base = {"charge_date": "2026-04-01", "plan_id": "pro"}
    jpy = render_email("upcoming_charge", {**base, "amount_minor": "3000", "currency": "JPY"})
    kwd = render_email("upcoming_charge", {**base, "amount_minor": "12500", "currency": "KWD"})

    assert jpy.subject == "Upcoming charge of ¥3,000 on April 1, 2026"
    assert kwd.subject == "Upcoming charge of KWD\xa012.500 on April 1, 2026"


def test_the_formatted_amount_is_the_fallback_when_minor_units_are_absent() -> None:
    data = {"charge_date": "2026-04-01", "plan_id": "pro", "amount": "$12.00"}
    assert render_email("upcoming_charge", data).subject.startswith("Upcoming charge of $12.00")


def _refused(kind: str, data: Mapping[str, str], **kwargs: object) -> str:
    with pytest.raises(RenderError) as caught:
        render_email(kind, data, **kwargs)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    return caught.value.message


def test_a_missing_required_key_is_refused_with_its_name() -> None:
    data = {k: v for k, v in SAMPLES["upcoming_charge"][0].items() if k != "charge_date"}
    message = _refused("upcoming_charge", data)
    assert message == "notice 'upcoming_charge' is missing required data: charge_date"


def test_an_empty_required_value_counts_as_missing() -> None:
    data = {**SAMPLES["payment_succeeded"][0], "invoice_id": " "}
    assert "invoice_id" in _refused("payment_succeeded", data)


def test_a_missing_amount_names_both_ways_to_give_it() -> None:
    data = {"charge_date": "2026-04-01", "plan_id": "pro", "currency": "USD"}
    message = _refused("upcoming_charge", data)
    assert "amount (amount_minor + currency, or a formatted amount)" in message


def test_payment_failed_without_the_update_card_link_is_refused() -> None:
    message = _refused("payment_failed", SAMPLES["payment_failed"][0], links={"portal": "x"})
    assert message == "notice 'payment_failed' needs the link(s): update_payment_method"


def test_an_unknown_kind_is_refused_and_the_known_ones_are_listed() -> None:
    message = _refused("newsletter", {})
    assert message.startswith("unknown notice kind 'newsletter'; known kinds: ")
    assert "upcoming_charge" in message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("charge_date", "03/04/2026", "charge_date='03/04/2026' is not an ISO 8601 date"),
        ("amount_minor", "12.50", "amount_minor='12.50' is not an integer"),
        ("currency", "XYZ", "unknown currency 'XYZ'"),
    ],
)
def test_malformed_values_are_refused_clearly(key: str, value: str, expected: str) -> None:
    data = {**SAMPLES["upcoming_charge"][0], key: value}
    assert expected in _refused("upcoming_charge", data)


def test_enrollment_code_has_no_subscription_footer_link() -> None:
    mail = render_email("enrollment_code", {"code": "482913"}, links=LINKS)

    assert "valid for 10 minutes" in mail.text
    assert LINKS["portal"] not in mail.text


def test_ops_notices_are_plain_internal_mails() -> None:
    data, _ = SAMPLES["ops_attention"]
    mail = render_email("ops_attention", {**data, "subscription_id": "sub_42"}, links=LINKS)

    assert mail.subject == "[OMS] Needs attention: sub_42: renewal refused (GATEWAY_REFUSED)"
    assert not mail.text.startswith("Hello")
    assert "oms retry sub_42" in mail.text
    assert LINKS["portal"] not in mail.text


def test_the_text_body_lays_facts_out_aligned_and_links_on_their_own_line() -> None:
    mail = render_email("payment_succeeded", SAMPLES["payment_succeeded"][0])
    facts = [line for line in mail.text.splitlines() if line.startswith("  ")]

    assert facts == [
        "  Amount paid:  $29.00",
        "  Invoice:      in_7f3a",
        "  Plan:         pro-monthly",
        "  Period:       March 1, 2026 \u2013 April 1, 2026",  # an en dash
    ]
    assert re.search(r"^-- $", mail.text, re.M)
