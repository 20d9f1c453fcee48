"""The enrollment workflow package: one sign-up from first code to first invoice.

``workflow``   the workflow: updates verify, resend, choose and pay; timers remind and expire
``calls``      the activities it calls (by name), with their timeouts and retries
"""

from workflows.enrollment.workflow import EnrollmentWorkflow

__all__ = ["EnrollmentWorkflow"]
