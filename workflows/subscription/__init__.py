"""The subscription workflow package: the main loop in ``workflow``, one module per concern.

``workflow``       the loop and thin message handlers
``steps``          what is next and when (every timer of the subscription)
``lifecycle``      creation, notices, renewals, collection outcomes
``billing``        invoices, charges, request invoices, credit, refunds
``dunning``        failed payments and the final action
``changes``        plan, quantity and interval changes
``cancellation``   cancel now or at period end, fees
``approvals``      requests waiting for approvers, their reminders and deadlines
``pausing``        pause and resume
``views``          the queries
``calls``          the typed activity façade (timeouts and retries set once)
``context``        the state, lock and shared helpers
"""

from workflows.subscription.workflow import SubscriptionWorkflow

__all__ = ["SubscriptionWorkflow"]
