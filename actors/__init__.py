"""The actor kernel: bounded mailboxes, supervised actors, and a registry of one actor per key.

It knows nothing of bots, models or HTTP; only trio and attrs. Also the adaptive limiter
that learns how many calls a far end takes at once. The error tree::

    ActorError
    ├── MailboxFull      the mailbox is at capacity; the sender may retry later
    └── ActorStopped     the actor stopped before handling the message
        └── ActorCrashed the message crashed its actor more often than the policy allows
"""

from actors._errors import ActorCrashed, ActorError, ActorStopped, MailboxFull
from actors._limiter import AdaptiveLimiter, LimiterStatistics, Slot
from actors._mailbox import Mailbox, MailboxStatistics
from actors._registry import Actor, Registry, RegistryStatistics
from actors._supervisor import RestartPolicy, RestartWindow

__all__ = [
    "Actor",
    "ActorCrashed",
    "ActorError",
    "ActorStopped",
    "AdaptiveLimiter",
    "LimiterStatistics",
    "Mailbox",
    "MailboxFull",
    "MailboxStatistics",
    "Registry",
    "RegistryStatistics",
    "RestartPolicy",
    "RestartWindow",
    "Slot",
]
