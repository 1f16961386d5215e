"""Which database errors are waited out and which are the message's fault (pure)."""

from __future__ import annotations

import psycopg
import psycopg_pool
import pytest

from chargesight.cloud.db import transient


@pytest.mark.parametrize(
    ("sqlstate", "expected"),
    [
        ("08006", True),  # connection failure
        ("57P01", True),  # admin shutdown (a restart)
        ("53100", True),  # disk full: it passes once there is room
        ("53300", True),  # too many connections
        ("40P01", True),  # deadlock
        ("40001", True),  # serialisation failure
        ("57014", False),  # a statement cancelled (a timeout): the same message would again
        ("54000", False),  # program limit exceeded (a row too big)
        ("22021", False),  # a data error is the message's
    ],
)
def test_errors_that_pass_by_themselves_are_transient_the_others_not(
    sqlstate: str, expected: bool
) -> None:
    assert transient(psycopg.errors.lookup(sqlstate)("x")) is expected


def test_client_side_connection_trouble_is_transient() -> None:
    assert transient(psycopg.OperationalError("connection lost"))  # no SQLSTATE
    assert transient(psycopg_pool.PoolTimeout("no connection in 30 s"))
    assert not transient(ValueError("not a database error"))
