"""The errors of e-mail rendering and delivery, as the relay acts on them.

The relay retries a :class:`TransientDeliveryError` on a back-off and dead-letters a
:class:`PermanentDeliveryError`; a :class:`RenderError` is a bug in the notice or its template
(it is a ``ValueError``, so a caller that only knows ``ValueError`` still catches it).
"""

from __future__ import annotations

__all__ = ["DeliveryError", "PermanentDeliveryError", "RenderError", "TransientDeliveryError"]


class DeliveryError(Exception):
    """An e-mail was not delivered.

    Attributes:
        message: What went wrong, for ``last_error`` and logs (never the message body).
        code: The SMTP reply code when the server answered with one, else ``None``.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class TransientDeliveryError(DeliveryError):
    """Worth trying again later: no connection, a timeout, a 4xx reply, a server-side problem."""


class PermanentDeliveryError(DeliveryError):
    """Will never succeed as it is: a 5xx reply to the recipient or the message, a bad address."""


class RenderError(ValueError):
    """A notice cannot be rendered: unknown kind, a required data key or link missing, bad data.

    Attributes:
        message: The sentence that says which kind and what is wrong.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
