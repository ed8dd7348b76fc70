"""Advisory locks belong to one database: a waiter names its own database's holder, never a
session holding the same key in another database of the server (a second deployment, another
test run)."""

from __future__ import annotations

import pytest

from orchestration.locks import LockWaitTimeout, advisory_lock


def test_a_waiter_names_the_holder_in_its_own_database(create_database):
    ours, theirs = create_database("locks"), create_database("locks")
    lock = "analytics"
    with advisory_lock(lock, what="the build lock", holder="their build", wait=0, database_url=theirs), \
            advisory_lock(lock, what="the build lock", holder="our build", wait=0, database_url=ours):
        # The same key held in both databases at once: they do not exclude each other.
        heard: list[str] = []
        with pytest.raises(LockWaitTimeout) as err, \
                advisory_lock(lock, what="the build lock", holder="a waiter", wait=1,
                              database_url=ours, announce=heard.append):
            pass
    assert "held by our build" in str(err.value) and "their build" not in str(err.value)
    assert heard and "held by our build" in heard[0]
