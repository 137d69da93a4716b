from __future__ import annotations


class ActorError(Exception):
    """Base of every error the actor kernel raises or hands to a message's sender."""


class MailboxFull(ActorError):
    """The mailbox is at capacity. Nothing was enqueued; the sender may try again later."""

    def __init__(self, capacity: int) -> None:
        super().__init__(f"mailbox is full ({capacity} messages waiting)")
        self.capacity = capacity


class ActorStopped(ActorError):
    """The actor stopped before it handled the message (shutdown, or it gave up after crashes)."""

    def __init__(self, key: object, reason: str) -> None:
        super().__init__(f"actor {key!r} stopped before handling the message: {reason}")
        self.key = key
        self.reason = reason


class ActorCrashed(ActorStopped):
    """The message crashed its actor on every attempt the restart policy allowed: a dead letter."""

    def __init__(self, key: object, attempts: int, cause: BaseException) -> None:
        super().__init__(
            key, f"crashed {attempts} times, last with {type(cause).__name__}: {cause}"
        )
        self.attempts = attempts
        self.cause = cause
