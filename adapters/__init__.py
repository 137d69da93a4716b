"""Channel edges: each adapter turns a wire protocol into `Inbound` events and delivers replies.

Adapters know nothing of models or memory; they call a `Deliver` and answer with what comes back.
"""

from adapters.base import (
    Accepted,
    Busy,
    Channel,
    ChannelError,
    Deliver,
    Inbound,
    KeyReserved,
    KeyReused,
    Lead,
    Progress,
    Reply,
    ReplyError,
    Responder,
    Route,
    SendingResponder,
    Sent,
    TextDelta,
    TextDiscarded,
    ToolProgress,
    Unattended,
    Unavailable,
)

__all__ = [
    "Accepted",
    "Busy",
    "Channel",
    "ChannelError",
    "Deliver",
    "Inbound",
    "KeyReserved",
    "KeyReused",
    "Lead",
    "Progress",
    "Reply",
    "ReplyError",
    "Responder",
    "Route",
    "SendingResponder",
    "Sent",
    "TextDelta",
    "TextDiscarded",
    "ToolProgress",
    "Unattended",
    "Unavailable",
]
