"""Enrollment's surfaces: the service behind ``/enrollments`` and ``oms enroll``.

See docs/enrollment.md.

``service``  validate, write the enrollment's row, drive its ``EnrollmentWorkflow``; who may act
``legal``    the terms of service and privacy notice a sign-up accepts (versions and hashes)
"""

from starter.enrollment.service import (
    EnrollmentCaller,
    EnrollmentService,
    StartEnrollment,
)

__all__ = ["EnrollmentCaller", "EnrollmentService", "StartEnrollment"]
