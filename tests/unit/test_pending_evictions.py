"""The replay queue of evictions Redis did not take (gateway/cache/pending.py)."""

from __future__ import annotations

import logging

import pytest

from gateway.cache.pending import Operation, PendingEvictions


class Redis:
    """Applies operations, failing the kinds listed in ``down``; records what it applied."""

    def __init__(self, *down: str) -> None:
        self.down = set(down)
        self.applied: list[Operation] = []

    async def apply(self, operation: Operation) -> None:
        if operation[0] in self.down:
            raise ConnectionError(f"{operation[0]} refused")
        self.applied.append(operation)


DELETE: Operation = ("delete", ("k1", "k2"))
GROUP: Operation = ("group", ("g",))
PUBLISH: Operation = ("publish", ("m1",))
REPUBLISH: Operation = ("republish", ("m2",))


async def test_a_replay_applies_oldest_first_and_empties_the_queue() -> None:
    pending, redis = PendingEvictions(), Redis()
    for operation in (DELETE, PUBLISH, GROUP, REPUBLISH):
        pending.keep(operation)
    await pending.replay(redis.apply)
    assert redis.applied == [DELETE, PUBLISH, GROUP, REPUBLISH]
    assert len(pending) == 0


async def test_a_failure_is_raised_after_every_other_was_tried_and_only_it_stays() -> None:
    pending, redis = PendingEvictions(), Redis("delete")
    for operation in (GROUP, PUBLISH, DELETE):
        pending.keep(operation)
    with pytest.raises(ConnectionError, match="delete refused"):
        await pending.replay(redis.apply)
    assert redis.applied == [GROUP, PUBLISH]
    assert len(pending) == 1 and pending.deletion_waiting()
    redis.down.clear()
    await pending.replay(redis.apply)
    assert redis.applied[-1] == DELETE and len(pending) == 0


async def test_a_message_sent_while_the_deletion_before_it_fails_stays_as_a_republish() -> None:
    """A replica that heard it emptied its memory and may read back the entry the failed
    deletion left: it must hear the message again once that deletion is done."""
    pending, redis = PendingEvictions(), Redis("group")
    pending.keep(GROUP)
    pending.keep(PUBLISH)
    with pytest.raises(ConnectionError):
        await pending.replay(redis.apply)
    assert redis.applied == [PUBLISH] and len(pending) == 2
    redis.down.clear()
    await pending.replay(redis.apply)
    assert redis.applied == [PUBLISH, GROUP, ("republish", PUBLISH[1])]
    assert len(pending) == 0


@pytest.mark.parametrize("failing", [DELETE, GROUP])
async def test_a_republish_waits_while_a_deletion_before_it_fails(failing: Operation) -> None:
    pending, redis = PendingEvictions(), Redis(failing[0])
    pending.keep(failing)
    pending.keep(REPUBLISH)
    with pytest.raises(ConnectionError):
        await pending.replay(redis.apply)
    assert redis.applied == [] and len(pending) == 2
    redis.down.clear()
    await pending.replay(redis.apply)
    assert redis.applied == [failing, REPUBLISH]


async def test_a_republish_ahead_of_a_failing_deletion_is_sent() -> None:
    """Only the deletions before it hold a republish back: a later one is another
    eviction's, with its own republish behind it."""
    pending, redis = PendingEvictions(), Redis("group")
    pending.keep(DELETE)
    pending.keep(REPUBLISH)
    pending.keep(GROUP)
    with pytest.raises(ConnectionError):
        await pending.replay(redis.apply)
    assert redis.applied == [DELETE, REPUBLISH]


async def test_a_failed_publish_does_not_hold_a_republish_back() -> None:
    pending, redis = PendingEvictions(), Redis("publish")
    pending.keep(PUBLISH)
    pending.keep(REPUBLISH)
    with pytest.raises(ConnectionError):
        await pending.replay(redis.apply)
    assert redis.applied == [REPUBLISH]


def test_only_deletions_count_as_waiting() -> None:
    pending = PendingEvictions()
    assert not pending.deletion_waiting()
    pending.keep(PUBLISH)
    pending.keep(REPUBLISH)
    assert not pending.deletion_waiting()
    pending.keep(GROUP)
    assert pending.deletion_waiting()


async def test_past_the_limit_the_oldest_is_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pending, redis = PendingEvictions(limit=2), Redis()
    with caplog.at_level(logging.WARNING, logger="gateway.cache.pending"):
        for operation in (DELETE, GROUP):
            pending.keep(operation)
        assert caplog.text == ""
        pending.keep(PUBLISH)
    assert "dropping the oldest eviction" in caplog.text
    await pending.replay(redis.apply)
    assert redis.applied == [GROUP, PUBLISH]


async def test_at_the_limit_a_republish_is_dropped_before_an_eviction_not_yet_heard(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pending, redis = PendingEvictions(limit=3), Redis()
    with caplog.at_level(logging.WARNING, logger="gateway.cache.pending"):
        for operation in (DELETE, REPUBLISH, GROUP, PUBLISH):
            pending.keep(operation)
    assert "dropping the oldest eviction" in caplog.text
    await pending.replay(redis.apply)
    assert redis.applied == [DELETE, GROUP, PUBLISH]


async def test_the_same_republish_is_kept_once_behind_the_latest_deletion() -> None:
    pending, redis = PendingEvictions(), Redis()
    for operation in (REPUBLISH, DELETE, REPUBLISH):
        pending.keep(operation)
    assert len(pending) == 2
    await pending.replay(redis.apply)
    assert redis.applied == [DELETE, REPUBLISH]


async def test_an_operation_dropped_at_the_limit_during_a_replay_is_not_an_error() -> None:
    pending = PendingEvictions(limit=2)

    async def apply(operation: Operation) -> None:
        if operation == DELETE:  # while Redis takes it, two more evictions fail and are kept
            pending.keep(GROUP)
            pending.keep(PUBLISH)

    pending.keep(DELETE)
    await pending.replay(apply)
    assert len(pending) == 2  # DELETE was dropped for PUBLISH; GROUP and PUBLISH wait
