"""The tools a model may call, their JSON schemas, and the executor that runs them."""

from runtime.tools.builtin import builtin_tools
from runtime.tools.registry import Tool, ToolContext, ToolExecutor, ToolRegistry, validate

__all__ = ["Tool", "ToolContext", "ToolExecutor", "ToolRegistry", "builtin_tools", "validate"]
