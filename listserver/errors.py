"""Exceptions that name outcomes.

The processing pipeline raises these; one place (``process.Processor``) turns each into a
held row, a rejection notice or a log line, as Mailman's pipelines do.
"""


class ListserverError(Exception):
    """An error the CLI reports as one line (exit status 1)."""


class ConfigError(ListserverError):
    """Bad configuration or bad usage (exit status 2)."""


class Outcome(Exception):
    """Base of the pipeline's decisions."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HoldMessage(Outcome):
    """Keep the message for a moderator, with the reason."""


class RejectMessage(Outcome):
    """Refuse the message; the sender is told why."""

    def __init__(self, reason: str, code: int = 550) -> None:
        super().__init__(reason)
        self.code = code


class DiscardMessage(Outcome):
    """Record the message with its class and do nothing more (bounces, loops, auto-replies)."""

    def __init__(self, reason: str, kind: str = "discarded") -> None:
        super().__init__(reason)
        self.kind = kind
