import pytest
import trio

from actors import Mailbox, MailboxFull


async def test_full_mailbox_is_refused_and_keeps_what_it_has() -> None:
    mailbox = Mailbox[int](2)
    mailbox.send_nowait(1)
    mailbox.send_nowait(2)
    with pytest.raises(MailboxFull) as refused:
        mailbox.send_nowait(3)
    assert refused.value.capacity == 2
    assert await mailbox.receive() == 1
    assert await mailbox.receive() == 2
    assert mailbox.statistics().peak == 2


async def test_close_hands_back_what_was_queued_in_order() -> None:
    mailbox = Mailbox[str](4)
    for message in "abc":
        mailbox.send_nowait(message)
    assert mailbox.close() == ["a", "b", "c"]
    assert mailbox.closed
    with pytest.raises(trio.ClosedResourceError):
        mailbox.send_nowait("d")
    with pytest.raises(trio.EndOfChannel):
        await mailbox.receive()


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Mailbox[int](0)
