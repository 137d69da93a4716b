"""BotCoreBot: the runtime that makes a BotCore workspace alive."""
