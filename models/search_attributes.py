"""Typed search attribute keys: what operators filter on in the Temporal Web UI.

A view of the workflow's state, not a source of truth. No PII goes here (not encrypted).
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
PLAN_ID = SearchAttributeKey.for_keyword("PlanId")
SUBSCRIPTION_STATUS = SearchAttributeKey.for_keyword("SubscriptionStatus")
NEXT_BILLING_AT = SearchAttributeKey.for_datetime("NextBillingAt")
DUNNING_STAGE = SearchAttributeKey.for_keyword("DunningStage")
PENDING_APPROVAL = SearchAttributeKey.for_bool("PendingApproval")
NEEDS_ATTENTION = SearchAttributeKey.for_bool("NeedsAttention")
# The subscription's tenant, set at start; never changes (operators filter a tenant's fleet).
TENANT_ID = SearchAttributeKey.for_keyword("TenantId")
# Set at start on subscriptions attached to a test clock (starter/clock.py); never changes.
TEST_CLOCK_ID = SearchAttributeKey.for_keyword("TestClockId")

# An enrollment's status (models.enrollment.EnrollmentStatus): the Web UI lists sign-ups by it.
ENROLLMENT_STATUS = SearchAttributeKey.for_keyword("EnrollmentStatus")

ALL = (
    CUSTOMER_ID,
    PLAN_ID,
    SUBSCRIPTION_STATUS,
    NEXT_BILLING_AT,
    DUNNING_STAGE,
    PENDING_APPROVAL,
    NEEDS_ATTENTION,
    TEST_CLOCK_ID,
    TENANT_ID,
    ENROLLMENT_STATUS,
)
