"""The progress relayed between replicas survives its encoding: in order, whole, in bounds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from adapters import Progress, TextDelta, TextDiscarded, ToolProgress
from runtime.relay import _PAYLOAD, decode, encode

events = st.lists(
    st.one_of(
        st.builds(TextDelta, st.text(max_size=5000)),
        st.builds(TextDelta, st.text(st.sampled_from('\x01😀é"'), min_size=900, max_size=3000)),
        st.builds(TextDiscarded, st.text(max_size=3000)),
        st.builds(
            ToolProgress,
            st.text(max_size=20),
            st.text(max_size=20),
            st.sampled_from(["start", "end"]),
            st.booleans(),
        ),
    ),
    max_size=30,
)


def as_streamed(items: list[Progress]) -> list[Progress]:
    """The events as a turn gives them: a discard withdraws exactly the end of the text."""
    text, out = "", []
    for item in items:
        if isinstance(item, TextDiscarded):
            item = TextDiscarded(text[len(text) - min(len(text), len(item.text)) :])
        out.append(item)
        text = text_of([TextDelta(text), item])
    return out


def text_of(items: list[Progress]) -> str:
    text = ""
    for item in items:
        if isinstance(item, TextDelta):
            text += item.text
        elif isinstance(item, TextDiscarded):
            text = text.removesuffix(item.text)
    return text


@given(events)
def test_encoded_progress_decodes_to_the_same_text_and_tools_in_order(
    items: list[Progress],
) -> None:
    items = as_streamed(items)
    payloads = encode(7, items)
    decoded: list[Progress] = []
    for payload in payloads:
        assert len(payload.encode()) < 8000  # PostgreSQL's limit for a notification
        found = decode(payload)
        assert found is not None and found[0] == 7
        decoded += found[1]
    assert text_of(decoded) == text_of(items)
    assert [i for i in decoded if isinstance(i, ToolProgress)] == [
        i for i in items if isinstance(i, ToolProgress)
    ]
    assert _PAYLOAD < 8000


def test_a_notification_that_is_not_progress_is_ignored() -> None:
    assert (
        decode("") is None
        and decode("{}") is None
        and decode('{"id": 1, "events": [["x", {}]]}') is None
    )
