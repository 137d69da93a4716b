"""The `schedule` tool: a message to the bot's own session, later (see `runtime.schedules`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from runtime.schedules import SCHEDULED_PREFIX, ScheduleError
from runtime.tools.registry import Tool, ToolContext

JSONObject = Mapping[str, object]


async def _schedule(context: ToolContext, args: JSONObject) -> str:
    schedules = context.schedules
    if schedules is None or context.inbox_id is None:
        return "error: schedules are not available here"
    channel, _, session_id = context.session_key.partition(":")
    action = args["action"]
    try:
        if action == "list":
            found = await schedules.pending(channel, session_id)
            return "\n".join(s.describe() for s in found) or "(no schedules in this session)"
        if action == "cancel":
            if not isinstance(args.get("id"), int):
                raise ScheduleError("cancel needs the schedule's id (see action=list)")
            cancelled = await schedules.cancel(int(str(args["id"])), channel, session_id)
            return f"cancelled #{args['id']}" if cancelled else f"no schedule #{args['id']} here"
        at = args.get("at")
        after = args.get("after_seconds")
        cron = args.get("cron")
        when = None
        if at is not None:
            try:
                parsed = datetime.fromisoformat(str(at))
            except ValueError:
                raise ScheduleError(
                    f"at {at!r} is not an ISO 8601 time such as 2026-05-01T09:00:00+02:00"
                ) from None
            when = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
        schedule = await schedules.add(
            context.inbox_id,
            str(args.get("text", "")),
            at=when,
            after=None if after is None else float(str(after)),
            cron=None if cron is None else str(cron),
        )
    except ScheduleError as exc:
        return f"error: {exc}"
    return f"scheduled {schedule.describe()}"


def schedule_tool() -> Tool:
    return Tool.compact(
        "schedule",
        "Message yourself in this conversation later: at a time, after a delay or by cron"
        f" (UTC). It arrives as '{SCHEDULED_PREFIX}<text>'; your answer goes to the user."
        " Also list or cancel (by id) this conversation's.",
        {
            "type": "object",
            "properties": {
                "action": {"type": "string", "enum": ["create", "list", "cancel"]},
                "text": {"type": "string"},
                "at": {"type": "string", "description": "ISO 8601; UTC if no offset"},
                "after_seconds": {"type": "number", "minimum": 0},
                "cron": {"type": "string", "description": "5 fields: '0 9 * * mon'"},
                "id": {"type": "integer"},
            },
            "required": ["action"],
            "additionalProperties": False,
        },
        _schedule,
    )
