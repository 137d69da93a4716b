"""`botcorebot init`: a new workspace with commented identity files."""

from __future__ import annotations

from pathlib import Path

FILES = {
    "IDENTITY.md": """\
# Identity
<!-- Who the bot is. The runtime reads the four fields below; edit them freely.
     Changes are picked up on the next message, no restart needed. -->

- **Name:** {name}
- **Creature:** a helpful familiar
- **Vibe:** calm, curious, to the point
- **Emoji:** 🦉
""",
    "SOUL.md": """\
# Soul
<!-- How the bot thinks and speaks: values, tone, what it will and will not do.
     This text goes into every prompt, so keep it short. -->

Be kind and concise. Say so when you do not know. Remember what the user asks you to.
""",
    "USER.md": """\
# User
<!-- What the bot should know about the person it talks to (name, preferences). -->
""",
    "botcore.toml": """\
# Settings for this bot; environment variables of the same name (upper case) win.
# Keys and tokens belong in the environment, not here; `botcorebot doctor` checks them.
# default_model = "claude-3-5-sonnet-20241022"   # or "gpt-4o-mini", "offline"
# http_port = 3000
# log_level = "info"                               # debug, info, warning, error, critical
# prompt_token_budget = 2000                       # tokens per prompt, the message excluded
# telegram_allowed_users = "@you"                  # with TELEGRAM_BOT_TOKEN in the environment
""",
}


def scaffold(directory: Path) -> list[str]:
    """Create the workspace files; refuses to overwrite any that exist."""
    existing = [name for name in FILES if (directory / name).exists()]
    if existing:
        raise FileExistsError(f"{directory} already has {', '.join(existing)}; nothing was changed")
    directory.mkdir(parents=True, exist_ok=True)
    name = directory.resolve().name.replace("-", " ").title() or "Bot"
    for filename, text in FILES.items():
        (directory / filename).write_text(text.format(name=name), encoding="utf-8")
    return list(FILES)
