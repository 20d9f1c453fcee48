"""Notices as e-mails: one template per kind and locale; text and HTML bodies from the same words.

A kind's template (``templates/{locale}/{kind}.txt``) declares the words of its e-mail as plain text
with ``{% set %}``: ``subject``, ``body`` (short paragraphs separated by blank lines), ``facts``
(label and value pairs: amount, date, invoice), ``actions`` (label and link pairs) and ``footer``
(why the reader gets it). ``templates/{locale}/_common.txt`` holds the greeting and
sign-off a kind may override. :func:`render_email` lays those pieces out twice: as plain text
here, and as HTML through ``templates/layout.html``, rendered with autoescape, so every value from
a notice is escaped in the HTML and the two bodies cannot say different things.

Values are formatted before a template sees them: an amount from ``amount_minor`` and
``currency`` with Babel in the reader's locale and the currency's ISO 4217 minor unit (a
preformatted ``amount`` is the fallback), dates and instants (ISO 8601) as long localized dates.
A locale without a template for the kind falls back to its language, then to English, and is
then formatted as English too, so the words and the numbers agree.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_time
from jinja2 import (
    Environment,
    PackageLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
    select_autoescape,
)

from activities.notify.errors import RenderError
from models.money import BillingInputError, minor_unit_exponent, normalize_currency

__all__ = [
    "AMOUNT",
    "DATE_KEYS",
    "INSTANT_KEYS",
    "KINDS",
    "KindSpec",
    "RenderError",
    "RenderedEmail",
    "format_amount",
    "format_day",
    "format_instant",
    "render_email",
]

DEFAULT_LOCALE = "en"

# The data-key vocabulary, one meaning per name across kinds. AMOUNT is satisfied by
# ``amount_minor`` + ``currency`` (formatted per locale) or by a preformatted ``amount``.
AMOUNT = "amount"
DATE_KEYS = frozenset(
    {
        "action_date",
        "charge_date",
        "due_date",
        "effective_date",
        "first_charge_date",
        "period_end",
        "period_start",
        "trial_end",
    }
)
INSTANT_KEYS = frozenset({"deadline", "expires_at", "next_retry_at", "retry_at"})

Audience = Literal["customer", "approvers", "ops"]


@dataclass(frozen=True)
class KindSpec:
    """What a kind of notice needs to be rendered.

    Attributes:
        audience: Who receives it: the customer, the approvers of the request's groups, or ops.
        required: Data keys that must be present and non-empty (``amount``: see ``AMOUNT``).
        optional: Data keys the templates use when present (absent or empty: left out).
        links: Keys of ``links`` the e-mail cannot do without (e.g. the update-card page).
        summary: One line for people: what the notice is.
    """

    audience: Audience
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    links: tuple[str, ...] = ()
    summary: str = ""

    @property
    def keys(self) -> tuple[str, ...]:
        """Every data key the kind's templates read, required first."""
        return self.required + self.optional


_CUSTOMER = ("name", "subscription_id", "timezone")
_PLAN = ("plan_id", "plan_name")
_CHANGE = (
    "previous_plan_id",
    "previous_plan_name",
    "quantity",
    "previous_quantity",
    "interval",
    AMOUNT,
)
_APPROVAL = ("groups", "subscription_id", "timezone")

KINDS: Mapping[str, KindSpec] = {
    "enrollment_code": KindSpec(
        "customer",
        ("code",),
        ("valid_minutes", "name"),
        summary="a one-time code that confirms an e-mail address (valid 10 minutes)",
    ),
    "enrollment_reminder": KindSpec(
        "customer",
        ("resume_url",),
        ("name", "plan_id", "plan_name", "expires_at", "timezone"),
        summary="a sign-up left unfinished for an hour: a link to continue it",
    ),
    "welcome": KindSpec(
        "customer",
        ("plan_id",),
        ("plan_name", "trial_end", "first_charge_date", AMOUNT, "sign_in_url", *_CUSTOMER),
        summary="the subscription has started (with the owner's first sign-in link)",
    ),
    "trial_ending": KindSpec(
        "customer",
        ("plan_id", "charge_date", AMOUNT),
        ("plan_name", *_CUSTOMER),
        summary="the trial ends and the first charge follows",
    ),
    "upcoming_charge": KindSpec(
        "customer",
        ("plan_id", "charge_date", AMOUNT),
        ("plan_name", *_CUSTOMER),
        summary="a renewal will be charged soon (lead time by interval)",
    ),
    "payment_succeeded": KindSpec(
        "customer",
        ("invoice_id", "plan_id", AMOUNT),
        ("plan_name", "period_start", "period_end", *_CUSTOMER),
        summary="the receipt for a paid invoice",
    ),
    "payment_failed": KindSpec(
        "customer",
        ("invoice_id", "plan_id", AMOUNT),
        ("plan_name", "next_retry_at", "action", *_CUSTOMER),
        links=("update_payment_method",),
        summary="a charge failed; the customer may update the payment method",
    ),
    "dunning_final": KindSpec(
        "customer",
        ("invoice_id", "plan_id", AMOUNT, "final_action", "action_date"),
        ("plan_name", *_CUSTOMER),
        links=("update_payment_method",),
        summary="the last notice before the dunning final action (cancel or mark unpaid)",
    ),
    "canceled": KindSpec(
        "customer",
        ("plan_id", "mode", "effective_date"),
        ("plan_name", "reason", *_CUSTOMER),
        summary="the subscription is canceled (now, at period end, or for nonpayment)",
    ),
    "change_applied": KindSpec(
        "customer",
        ("plan_id", "effective_date"),
        ("plan_name", *_CHANGE, *_CUSTOMER),
        summary="a plan, quantity or interval change took effect",
    ),
    "change_scheduled": KindSpec(
        "customer",
        ("plan_id", "effective_date"),
        ("plan_name", *_CHANGE, *_CUSTOMER),
        summary="a plan, quantity or interval change will take effect on a later date",
    ),
    "invoice_issued": KindSpec(
        "customer",
        ("invoice_id", AMOUNT, "due_date"),
        ("plan_id", "plan_name", "period_start", "period_end", *_CUSTOMER),
        summary="an invoice to pay by its due date (invoice-billed accounts)",
    ),
    "approval_requested": KindSpec(
        "approvers",
        ("request_id", "summary", "deadline"),
        _APPROVAL,
        summary="a request waits for a decision by the first approver group",
    ),
    "approval_reminder": KindSpec(
        "approvers",
        ("request_id", "summary", "deadline"),
        _APPROVAL,
        summary="a reminder: the request is still undecided",
    ),
    "approval_escalated": KindSpec(
        "approvers",
        ("request_id", "summary", "deadline"),
        _APPROVAL,
        summary="the request went to the next approver groups",
    ),
    "ops_attention": KindSpec(
        "ops",
        ("code", "step", "message", "retry_at"),
        ("activity", "subscription_id", "timezone"),
        summary="a loop step was refused; the subscription needs an operator",
    ),
    "ops_collections": KindSpec(
        "ops",
        (AMOUNT,),
        ("invoice_id", "decline_code", "refused", "subscription_id"),
        summary="an early-termination fee could not be collected and went to collections",
    ),
}


@dataclass(frozen=True)
class RenderedEmail:
    """A notice rendered for one reader.

    Attributes:
        subject: One line, no line breaks.
        text: The plain-text body.
        html: The HTML body (every value escaped).
    """

    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class _Pieces:
    """The words a kind's template declares, as plain text."""

    lang: str
    subject: str
    greeting: str
    paragraphs: list[str]
    facts: list[tuple[str, str]]
    actions: list[tuple[str, str]]
    signoff: list[str]
    footer: str
    manage: tuple[str, str] | None = None


# --- formatting --------------------------------------------------------------------------


def format_amount(amount_minor: int, currency: str, locale: str | Locale = DEFAULT_LOCALE) -> str:
    """An amount in minor units for people, in ``locale``: ``€1,234.56``, ``1.234,56 €``.

    The digits after the separator are the currency's ISO 4217 minor unit (JPY 0, KWD 3), not
    CLDR's rounding preference, so an amount is never rounded on its way to the reader.

    Args:
        amount_minor: The amount in minor units (may be negative).
        currency: ISO 4217 code, any case.
        locale: A Babel locale or identifier (``de``, ``de_CH``, ``en-GB``).

    Raises:
        BillingInputError: For an unknown currency.
    """
    code = normalize_currency(currency)
    exponent = minor_unit_exponent(code)
    loc = locale if isinstance(locale, Locale) else _locale(locale)
    pattern = copy.copy(loc.currency_formats["standard"])
    pattern.frac_prec = (exponent, exponent)
    value = Decimal(amount_minor).scaleb(-exponent)
    text = str(pattern.apply(value, loc, currency=code, currency_digits=False))
    return _DIGIT_THEN_CODE.sub("\xa0", _CODE_THEN_DIGIT.sub("\xa0", text))


def format_day(value: str, locale: str | Locale = DEFAULT_LOCALE, tz: tzinfo = UTC) -> str:
    """An ISO date (or the date of an ISO instant, in ``tz``) as a long date: ``March 3, 2026``.

    Raises:
        ValueError: When ``value`` is not ISO 8601.
    """
    loc = locale if isinstance(locale, Locale) else _locale(locale)
    day = _parse_day(value, tz)
    return str(format_date(day, "long", locale=loc))


def format_instant(value: str, locale: str | Locale = DEFAULT_LOCALE, tz: tzinfo = UTC) -> str:
    """An ISO instant as a long date, a short time and the zone: ``March 3, 2026, 2:05 PM UTC``.

    A naive instant is UTC; a bare date is formatted as a date.

    Raises:
        ValueError: When ``value`` is not ISO 8601.
    """
    loc = locale if isinstance(locale, Locale) else _locale(locale)
    text = value.strip()
    if len(text) == 10:
        return format_day(text, loc, tz)
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    local = moment.astimezone(tz)
    day = str(format_date(local.date(), "long", locale=loc))
    time = str(format_time(local, "short", locale=loc))
    joined = str(loc.datetime_formats["medium"]).replace("'", "").format(time, day)
    return f"{joined} {local.tzname() or 'UTC'}"


def _parse_day(value: str, tz: tzinfo) -> date:
    text = value.strip()
    if len(text) == 10:
        return date.fromisoformat(text)
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(tz).date()


@lru_cache(maxsize=64)
def _locale(identifier: str) -> Locale:
    """The Babel locale for ``identifier``; English for anything Babel does not know."""
    try:
        return Locale.parse(identifier.strip().replace("-", "_") or DEFAULT_LOCALE)
    except (UnknownLocaleError, ValueError, TypeError):
        return Locale.parse(DEFAULT_LOCALE)


def _zone(name: str) -> tzinfo:
    """The reader's zone for instants; UTC when absent or unknown (the zone is always shown)."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


# --- templates ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _environment() -> Environment:
    # .html is autoescaped (the layout); the kinds' .txt templates produce plain text pieces that
    # the HTML layout escapes. StrictUndefined: a typo in a template fails loudly, not blank.
    return Environment(
        loader=PackageLoader("activities.notify", "templates"),
        autoescape=select_autoescape(
            enabled_extensions=("html",), default_for_string=False, default=False
        ),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@lru_cache(maxsize=1)
def _template_names() -> frozenset[str]:
    return frozenset(_environment().list_templates())


def _template_locale(kind: str, locale: Locale) -> tuple[str, Locale]:
    """The template folder to use for ``kind`` and the locale to format values in."""
    names = _template_names()
    candidates = [str(locale), locale.language, DEFAULT_LOCALE]
    for folder in candidates:
        if f"{folder}/{kind}.txt" in names:
            same_language = _locale(folder).language == locale.language
            return folder, locale if same_language else _locale(folder)
    raise RenderError(f"no template for notice kind {kind!r} (templates/en/{kind}.txt)")


# --- rendering ---------------------------------------------------------------------------


def render_email(
    kind: str,
    data: Mapping[str, str],
    *,
    locale: str = DEFAULT_LOCALE,
    links: Mapping[str, str] | None = None,
) -> RenderedEmail:
    """Render a notice as an e-mail for one reader.

    Args:
        kind: The notice kind, a key of :data:`KINDS`.
        data: The notice's data (strings; ISO dates; ``amount_minor`` + ``currency``).
        locale: The reader's locale (``en``, ``de``, ``de_CH``, ``de-DE``); unknown: English.
        links: Absolute URLs the e-mail may point to: ``portal`` (footer),
            ``update_payment_method``, ``approval``, ``invoice``.

    Returns:
        The subject, the text body and the HTML body.

    Raises:
        RenderError: (a ``ValueError``) for an unknown kind, a missing required key or link, or a
            value that is not what its key promises (a date that is not ISO, a bad amount).
    """
    spec = KINDS.get(kind)
    if spec is None:
        raise RenderError(f"unknown notice kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    link_map = {k: v for k, v in (links or {}).items() if v}
    _check_required(kind, spec, data, link_map)
    folder, fmt_locale = _template_locale(kind, _locale(locale))
    context = _context(kind, spec, data, link_map, fmt_locale)
    pieces = _pieces(kind, spec, folder, context)
    html = _environment().get_template("layout.html").render(p=pieces) + "\n"
    return RenderedEmail(subject=pieces.subject, text=_text(pieces), html=html)


def _present(data: Mapping[str, str], key: str) -> bool:
    value = data.get(key)
    return isinstance(value, str) and value.strip() != ""


def _has_amount(data: Mapping[str, str]) -> bool:
    return (_present(data, "amount_minor") and _present(data, "currency")) or _present(data, AMOUNT)


def _check_required(
    kind: str, spec: KindSpec, data: Mapping[str, str], links: Mapping[str, str]
) -> None:
    missing = [
        "amount (amount_minor + currency, or a formatted amount)" if key == AMOUNT else key
        for key in spec.required
        if not (_has_amount(data) if key == AMOUNT else _present(data, key))
    ]
    if missing:
        raise RenderError(f"notice {kind!r} is missing required data: {', '.join(missing)}")
    missing_links = [key for key in spec.links if key not in links]
    if missing_links:
        raise RenderError(f"notice {kind!r} needs the link(s): {', '.join(missing_links)}")


# Line breaks and ordinary blanks; not the no-break space Babel puts in "1.234,56\xa0€".
_BLANKS = re.compile(r"[ \t\r\n\v\f\x85\u2028\u2029]+")
# CLDR's currency spacing, which Babel does not apply: "KWD 1,234.567", not "KWD1,234.567".
_CODE_THEN_DIGIT = re.compile(r"(?<=[A-Za-z])(?=[-\d])")
_DIGIT_THEN_CODE = re.compile(r"(?<=\d)(?=[A-Za-z])")


def _one_line(value: str) -> str:
    return _BLANKS.sub(" ", value).strip(" ")


def _context(
    kind: str,
    spec: KindSpec,
    data: Mapping[str, str],
    links: Mapping[str, str],
    locale: Locale,
) -> dict[str, Any]:
    """Every key the kind reads, formatted for ``locale`` (absent optional keys: ``""``)."""
    tz = _zone(data.get("timezone", ""))
    values: dict[str, Any] = {}
    for key in spec.keys:
        if key == AMOUNT:
            values[key] = _amount(kind, data, locale)
            continue
        raw = data.get(key, "")
        raw = raw.strip() if isinstance(raw, str) else ""
        try:
            if raw and key in DATE_KEYS:
                values[key] = format_day(raw, locale, tz)
            elif raw and key in INSTANT_KEYS:
                values[key] = format_instant(raw, locale, tz)
            else:
                values[key] = _one_line(raw)
        except ValueError as err:
            raise RenderError(
                f"notice {kind!r}: {key}={raw!r} is not an ISO 8601 date or instant"
            ) from err
    if "plan_id" in values:
        values["plan"] = values.get("plan_name") or values["plan_id"]
    if "previous_plan_id" in values:
        values["previous_plan"] = values.get("previous_plan_name") or values["previous_plan_id"]
    values["data"] = {k: _one_line(v) for k, v in data.items() if isinstance(v, str)}
    values["links"] = dict(links)
    values["locale"] = str(locale)
    values["audience"] = spec.audience
    return values


def _amount(kind: str, data: Mapping[str, str], locale: Locale) -> str:
    if _present(data, "amount_minor") and _present(data, "currency"):
        raw = data["amount_minor"].strip()
        if not re.fullmatch(r"-?\d+", raw):
            raise RenderError(f"notice {kind!r}: amount_minor={raw!r} is not an integer")
        try:
            return format_amount(int(raw), data["currency"], locale)
        except BillingInputError as err:
            raise RenderError(f"notice {kind!r}: {err.message}") from err
    return _one_line(data.get(AMOUNT, ""))


def _pieces(kind: str, spec: KindSpec, folder: str, context: dict[str, Any]) -> _Pieces:
    env = _environment()
    try:
        common = env.get_template(f"{folder}/_common.txt").make_module(context)
        module = env.get_template(f"{folder}/{kind}.txt").make_module(context)
    except TemplateNotFound as err:
        raise RenderError(f"notice {kind!r}: template {err.name} is missing") from err
    except TemplateError as err:
        raise RenderError(f"notice {kind!r}: template {folder}/{kind}.txt: {err}") from err

    def piece(name: str, default: Any = "") -> Any:
        value = getattr(module, name, None)
        if value is None:
            value = getattr(common, name, default)
        return value

    subject = _one_line(str(piece("subject")))
    if not subject:
        raise RenderError(f"notice {kind!r}: template {folder}/{kind}.txt sets no subject")
    paragraphs = [
        _one_line(block) for block in re.split(r"\n\s*\n", str(piece("body"))) if block.strip()
    ]
    facts = [(_one_line(str(k)), _one_line(str(v))) for k, v in piece("facts", []) if str(v)]
    actions = [(_one_line(str(k)), str(v).strip()) for k, v in piece("actions", []) if v]
    portal = context["links"].get("portal")
    # The footer's "manage" link, unless the e-mail's own button already goes there.
    manage = (
        (_one_line(str(piece("manage"))), portal)
        if portal
        and spec.audience == "customer"
        and not kind.startswith("enrollment_")  # not a customer yet: nothing to manage
        and all(url != portal for _, url in actions)
        else None
    )
    return _Pieces(
        lang=folder.replace("_", "-"),
        subject=subject,
        greeting=_one_line(str(piece("greeting"))),
        paragraphs=paragraphs,
        facts=facts,
        actions=actions,
        signoff=[line.strip() for line in str(piece("signoff")).strip().splitlines()],
        footer=_one_line(str(piece("footer"))),
        manage=manage,
    )


def _text(p: _Pieces) -> str:
    """The plain-text body: one line per paragraph (mail clients wrap them to the screen, and a
    command or link is never cut), aligned facts, links on lines of their own."""
    sections: list[str] = []
    if p.greeting:
        sections.append(p.greeting)
    sections.extend(p.paragraphs)
    if p.facts:
        width = max(len(label) for label, _ in p.facts) + 1
        sections.append("\n".join(f"  {label + ':':<{width}}  {value}" for label, value in p.facts))
    sections.extend(f"{label}:\n{url}" for label, url in p.actions)
    if p.signoff:
        sections.append("\n".join(p.signoff))
    footer = [p.footer] if p.footer else []
    if p.manage is not None:
        footer.append(f"{p.manage[0]}: {p.manage[1]}")
    if footer:
        sections.append("-- \n" + "\n".join(footer))
    return "\n\n".join(sections) + "\n"
