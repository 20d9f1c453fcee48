"""Channel adapters: each channel's own payload -> canonical orders (pure, no I/O).

``parse_payload(channel, body, ctx)`` decodes the body and dispatches to the channel's adapter.
JSON channels publish a JSON Schema (``schemas/{module}.json``, generated from the adapter's
pydantic model and checked against it by the tests); the partner CSV format is documented in
``models/channels/partner.py`` and ``docs/intake.md``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any

from pydantic import BaseModel

from models.channels import mobile, partner, referral, stripe_checkout, web
from models.errors import ErrorCode, OmsError
from models.orders import AdapterContext, Channel, ParsedPayload

__all__ = ["ADAPTERS", "MAX_PAYLOAD_BYTES", "SCHEMA_MODELS", "decode", "parse_payload", "schema"]

MAX_PAYLOAD_BYTES = 5 * 1024 * 1024

Adapter = Callable[[str, AdapterContext], ParsedPayload]

ADAPTERS: dict[Channel, Adapter] = {
    Channel.WEB: web.parse,
    Channel.MOBILE: mobile.parse,
    Channel.PARTNER: partner.parse,
    Channel.STRIPE_CHECKOUT: stripe_checkout.parse,
    Channel.REFERRAL: referral.parse,
}

# The pydantic model each JSON channel's schema file is generated from, by file name.
SCHEMA_MODELS: dict[Channel, tuple[str, type[BaseModel]]] = {
    Channel.WEB: ("web.json", web.WebOrderPayload),
    Channel.MOBILE: ("mobile.json", mobile.MobileOrderPayload),
    Channel.STRIPE_CHECKOUT: ("stripe_checkout.json", stripe_checkout.StripeCheckoutEvent),
    Channel.REFERRAL: ("referral.json", referral.ReferralBatch),
}

CONTENT_TYPES: dict[Channel, str] = {Channel.PARTNER: partner.CONTENT_TYPE}


def content_type(channel: Channel) -> str:
    """The media type a channel's payloads are sent as."""
    return CONTENT_TYPES.get(channel, "application/json")


def decode(body: bytes | str) -> str:
    """The body as text (UTF-8, a leading BOM dropped), or ``OmsError(MALFORMED_PAYLOAD)``."""
    if isinstance(body, str):
        text = body
    else:
        if len(body) > MAX_PAYLOAD_BYTES:
            raise OmsError(
                ErrorCode.MALFORMED_PAYLOAD,
                f"payload is {len(body)} bytes; the limit is {MAX_PAYLOAD_BYTES}: split it",
            )
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            raise OmsError(
                ErrorCode.MALFORMED_PAYLOAD, f"payload is not UTF-8 text (byte {err.start})"
            ) from None
    if not text.strip():
        raise OmsError(ErrorCode.MALFORMED_PAYLOAD, "payload is empty")
    return text


def parse_payload(channel: Channel, body: bytes | str, ctx: AdapterContext) -> ParsedPayload:
    """Decode ``body`` and run ``channel``'s adapter on it.

    Raises:
        OmsError: ``MALFORMED_PAYLOAD`` or ``SIGNATURE_INVALID`` when the payload as a whole is
            unusable; problems with single orders come back as item errors instead.
    """
    return ADAPTERS[channel](decode(body), ctx)


def schema(channel: Channel) -> dict[str, Any] | None:
    """The published JSON Schema of a JSON channel (None for the CSV channel)."""
    entry = SCHEMA_MODELS.get(channel)
    if entry is None:
        return None
    text = resources.files("models.channels").joinpath("schemas", entry[0]).read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def generated_schema(channel: Channel) -> dict[str, Any]:
    """The JSON Schema the adapter's model produces now (what the schema file must hold)."""
    _, model = SCHEMA_MODELS[channel]
    generated: dict[str, Any] = model.model_json_schema()
    generated["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    generated["$id"] = f"https://oms.example/schemas/orders/{channel.value}.json"
    return generated
