"""Order intake: every channel's orders through one governed entry flow.

``IntakeService.handle(channel, body, headers, principal=...)`` runs, for an authenticated
principal that may send orders through the channel (``models.intake_rules.check_channel_access``):

1. the channel adapter (``models/channels``): payload -> canonical orders, or item errors; each
   order is put in the principal's scope (tenant, principal id: the same channel order id from
   another principal is another order);
2. the access rules: the principal must be authorized for the account the order bills, else 403
   ``ACCOUNT_NOT_AUTHORIZED`` and nothing is recorded or reserved;
3. one DB transaction (``IntakeStore.claim``): a repeat of an accepted order returns its first
   result (200) and creates nothing, a copy with other terms is refused (409); otherwise the pure
   rules (``models/intake_rules``) judge it on fresh facts (the credit account of the principal's
   tenant, stock) and it is recorded as rejected (with the rule that fired) or as pending with
   its stock and credit reserved;
4. the subscription's update-with-start (``OmsService.subscribe(wait_for_payment=False)``), in the
   principal's tenant with the principal as its audit actor: the answer as soon as its workflow
   accepted it;
5. one DB transaction marking it accepted with the answer repeats get (201).

Transient failures (Temporal, the database or the gateway unavailable, time-outs) are retried with
exponential backoff while the request budget lasts; an order that still fails, and every payload
or item that cannot be parsed, is written to the dead-letter table with its raw payload, reason,
attempts and priority (one-year value x customer tier weight), card-like numbers masked. If even
that write fails the dead
letter goes to a local spool file and is moved into the table once the database answers again:
nothing is dropped silently. Counters and a latency histogram live in a Prometheus registry the
service owns (``metrics.exposition()``).

The modules: ``settings`` (knobs), ``results`` (the answers), ``transient`` (what is retried),
``metrics``, ``submission`` (who a payload acts for), ``service`` (``IntakeService``: ``handle``,
replays), ``order_path`` (one order: access, claim, start, record, retries), ``dead_letters``
(recording them), ``spool`` (the local file), ``operations`` (the dead-letter queue and reports)
and ``demo`` (``oms intake seed``). Import from the package: every name below is re-exported here.
"""

from starter.intake.dead_letters import BASE64_SUFFIX, KEPT_HEADERS
from starter.intake.demo import DEMO_SEED, seed
from starter.intake.metrics import IntakeMetrics
from starter.intake.operations import dead_letter_view
from starter.intake.results import (
    INTERNAL,
    IntakeError,
    IntakeResponse,
    ItemResult,
    Outcome,
    summarize,
)
from starter.intake.service import IntakeService
from starter.intake.settings import LOCAL_WEBHOOK_SECRET, IntakeSettings, load_intake_settings
from starter.intake.submission import (
    STRIPE_CHECKOUT_PRINCIPAL_ID,
    Submission,
    stripe_checkout_principal,
)
from starter.intake.transient import TRANSIENT, TRANSIENT_RPC, classify

__all__ = [
    "BASE64_SUFFIX",
    "DEMO_SEED",
    "INTERNAL",
    "KEPT_HEADERS",
    "LOCAL_WEBHOOK_SECRET",
    "STRIPE_CHECKOUT_PRINCIPAL_ID",
    "TRANSIENT",
    "TRANSIENT_RPC",
    "IntakeError",
    "IntakeMetrics",
    "IntakeResponse",
    "IntakeService",
    "IntakeSettings",
    "ItemResult",
    "Outcome",
    "Submission",
    "classify",
    "dead_letter_view",
    "load_intake_settings",
    "seed",
    "stripe_checkout_principal",
    "summarize",
]
