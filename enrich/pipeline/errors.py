"""How a processing failure is classified: retry later, or fail now with a reason."""

from __future__ import annotations


class ProcessingError(Exception):
    """A failure with a message fit for the sender (``user_message``) and the log."""

    recoverable: bool = True

    def __init__(self, reason: str, *, user_message: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.user_message = user_message


class RecoverableError(ProcessingError):
    """Timeouts, 5xx, 429, an open breaker: the same work may succeed later."""

    recoverable = True


class PermanentError(ProcessingError):
    """Too large, unsupported, undecodable: retrying cannot help."""

    recoverable = False
