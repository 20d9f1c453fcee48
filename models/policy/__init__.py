"""Policies as data: whether a change may happen, when it takes effect, and who must approve it.

The policy document (``models/data/policy.yaml``, explained in ``docs/policy.md``) holds rules at
three levels: ``default``, ``segments.<segment>`` and ``plans.<plan_id>``. For every decision the
most specific level that has a rule wins (plan > segment > default), and the winning rule is used
whole. Rules are never merged field by field, so the rule a person reads is the rule applied. Under
``changes:`` a level may name a change kind or ``any`` (every kind that level does not name).

Every decision is a pure function of its arguments: dates and instants are passed in, nothing reads
a clock, the environment or a file (``default_policy`` reads the packaged YAML, outside workflows).
Decisions are pydantic models so they cross the Temporal boundary with the pydantic converter.

Modules (every public name is re-exported here; import from ``models.policy``):

- ``vocabulary``: segments, change kinds, timings, credit handling.
- ``fields``: field types of the document (durations, percentages, amounts per currency).
- ``rules``: approval routes and SLAs; change, cancellation and pause rules; a level's rule set.
- ``document``: the document's levels, validation, which rule applies, approvers.
- ``decisions``: the decision models.
- ``terms``: the terms a change compares, and classifying a change.
- ``changes``, ``cancellation``, ``pauses``: the decisions, mixed into :class:`Policy`.
- ``loading``: :class:`Policy` itself, :func:`load_policy` and :func:`default_policy`.
"""

from models.policy.decisions import (
    CancellationDecision,
    ChangeDecision,
    Decision,
    PauseDecision,
    ResumeDecision,
)
from models.policy.fields import AmountsByCurrency as AmountsByCurrency
from models.policy.fields import Duration as Duration
from models.policy.fields import NonNegativeInt as NonNegativeInt
from models.policy.fields import Percent as Percent
from models.policy.fields import parse_duration
from models.policy.loading import Policy, default_policy, load_policy
from models.policy.rules import (
    ApprovalRoute,
    ApprovalSla,
    CancellationApprovalWhen,
    CancellationRule,
    ChangeApprovalWhen,
    ChangeRule,
    EarlyTerminationFee,
    FlatFee,
    NoFee,
    PauseApprovalWhen,
    PauseRule,
    RemainingMonthsFee,
    RuleSet,
)
from models.policy.terms import TermsSnapshot, classify_change, monthly_amount_delta_minor
from models.policy.vocabulary import ANY as ANY
from models.policy.vocabulary import (
    CHANGE_KINDS,
    SEGMENTS,
    ChangeKind,
    CreditHandling,
    Segment,
    Timing,
    WithinMinimumTerm,
    parse_timing,
)

__all__ = [
    "CHANGE_KINDS",
    "SEGMENTS",
    "ApprovalRoute",
    "ApprovalSla",
    "CancellationApprovalWhen",
    "CancellationDecision",
    "CancellationRule",
    "ChangeApprovalWhen",
    "ChangeDecision",
    "ChangeKind",
    "ChangeRule",
    "CreditHandling",
    "Decision",
    "EarlyTerminationFee",
    "FlatFee",
    "NoFee",
    "PauseApprovalWhen",
    "PauseDecision",
    "PauseRule",
    "Policy",
    "RemainingMonthsFee",
    "ResumeDecision",
    "RuleSet",
    "Segment",
    "TermsSnapshot",
    "Timing",
    "WithinMinimumTerm",
    "classify_change",
    "default_policy",
    "load_policy",
    "monthly_amount_delta_minor",
    "parse_duration",
    "parse_timing",
]
