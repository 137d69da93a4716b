from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs

from adapters import TextDiscarded
from runtime.llm.base import (
    ModelRequest,
    ModelResponse,
    OnText,
    Provider,
    ProviderUnavailable,
    Retries,
)

log = logging.getLogger("runtime.llm")


class FallbackProvider:
    """Tries each provider in order while the previous one is unavailable (after its retries).

    A rejection (bad key, bad request) is not a reason to try the next: it is raised as is.
    A model that fails after streaming some text has that text withdrawn (`TextDiscarded`
    through `on_text`) before the next one answers from the start.
    """

    def __init__(self, providers: Sequence[Provider]) -> None:
        if not providers:
            raise ValueError("FallbackProvider needs at least one provider")
        self._providers = list(providers)

    @property
    def name(self) -> str:
        return " → ".join(provider.name for provider in self._providers)

    async def complete(
        self, request: ModelRequest, *, on_text: OnText | None = None
    ) -> ModelResponse:
        retries = Retries()
        for index, provider in enumerate(self._providers):
            streamed: list[str] = []

            def relay(piece: str | TextDiscarded, streamed: list[str] = streamed) -> None:
                if isinstance(piece, str):
                    streamed.append(piece)
                assert on_text is not None
                on_text(piece)

            try:
                response = await provider.complete(
                    request, on_text=None if on_text is None else relay
                )
            except ProviderUnavailable as exc:
                retries += exc.retries
                if index == len(self._providers) - 1:
                    raise ProviderUnavailable(str(exc), retries=retries) from exc
                following = self._providers[index + 1].name
                log.warning(
                    "%s unavailable (%s); falling back to %s", provider.name, exc, following
                )
                if streamed and on_text is not None:
                    # The next model starts over: what this one said is not the answer.
                    on_text(TextDiscarded("".join(streamed)))
                continue
            return attrs.evolve(response, retries=response.retries + retries)
        raise AssertionError("unreachable")

    async def reachable(self) -> str | None:
        """Reachable when any of the models is."""
        problems = []
        for provider in self._providers:
            problem = await provider.reachable()
            if problem is None:
                return None
            problems.append(problem)
        return "; ".join(problems)

    async def aclose(self) -> None:
        for provider in self._providers:
            await provider.aclose()
