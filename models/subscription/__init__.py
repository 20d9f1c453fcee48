"""The subscription's models: its state, the messages of its workflow and activities, its offers.

- ``state``: SubscriptionState (what ``continue_as_new`` carries) and the parts it holds.
- ``messages``: what the workflow's updates, signals and queries take and return.
- ``activity``: what its activities take and return.
- ``offers``: the catalog's terms as a subscription locks them.

Every name is re-exported here: import from ``models.subscription``. Recorded histories carry
these models by field name only, so class names and fields must not change (add fields with
defaults only).
"""

from models.subscription.activity import (
    ApprovalRecord,
    AuditEntry,
    ChargeRequest,
    ChargeResult,
    CreditEntry,
    InvoiceDraft,
    InvoiceSettlement,
    Notification,
    ProvisionCustomer,
    ProvisionedCustomer,
    RefundRequest,
    RefundResult,
    SubscriptionSnapshot,
    TransitionRecord,
)
from models.subscription.messages import (
    ApprovalDecision,
    ApprovalResult,
    AttentionRetry,
    CancelRequest,
    CancelResult,
    ChangeRequest,
    ChangeResult,
    PauseRequest,
    PauseResult,
    PaymentMethodResult,
    PaymentMethodUpdate,
    PendingApproval,
    PendingChange,
    PendingView,
    ResumeRequest,
    StartRequest,
    StartResult,
    SubscriptionResult,
    SubscriptionView,
    Timeline,
    TimelineEvent,
    UncancelRequest,
    WithdrawRequest,
)
from models.subscription.offers import (
    catalog_offers,
    catalog_terms,
)
from models.subscription.state import (
    Actor,
    Attention,
    BilledPeriod,
    OpenInvoice,
    PaymentRef,
    SubscriptionState,
    SubscriptionStatus,
    Terms,
)

# SubscriptionState refers to message models that state.py cannot import at runtime (they import
# state.py): resolve those references now that every module is loaded.
SubscriptionState.model_rebuild()

__all__ = [
    "Actor",
    "ApprovalDecision",
    "ApprovalRecord",
    "ApprovalResult",
    "Attention",
    "AttentionRetry",
    "AuditEntry",
    "BilledPeriod",
    "CancelRequest",
    "CancelResult",
    "ChangeRequest",
    "ChangeResult",
    "ChargeRequest",
    "ChargeResult",
    "CreditEntry",
    "InvoiceDraft",
    "InvoiceSettlement",
    "Notification",
    "OpenInvoice",
    "PauseRequest",
    "PauseResult",
    "PaymentMethodResult",
    "PaymentMethodUpdate",
    "PaymentRef",
    "PendingApproval",
    "PendingChange",
    "PendingView",
    "ProvisionCustomer",
    "ProvisionedCustomer",
    "RefundRequest",
    "RefundResult",
    "ResumeRequest",
    "StartRequest",
    "StartResult",
    "SubscriptionResult",
    "SubscriptionSnapshot",
    "SubscriptionState",
    "SubscriptionStatus",
    "SubscriptionView",
    "Terms",
    "Timeline",
    "TimelineEvent",
    "TransitionRecord",
    "UncancelRequest",
    "WithdrawRequest",
    "catalog_offers",
    "catalog_terms",
]
