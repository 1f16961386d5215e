"""Stored but not yet analysed: durable until analysed, caught up by whoever is left.

The collector acknowledges a batch once it is committed, and analyses it later (the
analysis loop coalesces batches). A collector killed in between used to leave those
messages stored and never analysed — an escalation in ``escalations`` with no issue — and
the broker's redelivery is a duplicate, so nothing brought them back. Now:

* ``store_batch(..., owner=N)`` writes one ``unanalysed`` row per batch that had new
  escalations or digests (its key, ``owner`` and the message ids), in the batch's own
  transaction and pipeline: one small INSERT per batch, no round trip, nothing per message.
* After ``Engine.on_stored`` succeeded for them, the collector deletes its batches' rows
  (:func:`mark_analysed`, one DELETE per analysis step). A failed analysis leaves them.
* **Owners.** Each collector process takes a fresh ``owner`` number at start
  (``analysis_owner_seq``) and holds the session advisory lock ``(ANALYSIS_OWNER_LOCK,
  owner)`` on a connection of its own while it lives (:class:`AnalysisOwner`); its ingest
  workers write its number. A collector that *can* take another owner's lock knows that
  owner is gone (killed, crashed, scaled away), and analyses its rows while holding the
  lock (:func:`catch_up`) — at start, before it subscribes, and then every
  ``[analysis] refresh_interval_s``. So with several replicas sharing one database, a live
  replica's in-flight batches are never taken (its lock is held), a dead one's are taken at
  once rather than after some guessed age, and two replicas catching up together never take
  the same owner's rows (the second cannot get the lock). This was chosen over an age
  threshold (``stored_at < now() - X``), which either waits X after a restart or steals a
  slow live replica's batches, and over ``FOR UPDATE SKIP LOCKED``, which would need the
  transaction that stored a batch to stay open until its analysis.
* **Idempotent analysis.** If the lock's connection drops while its replica lives, or a
  collector dies *during* analysis, a batch may be analysed twice. Every step of
  ``on_stored`` is safe to repeat: an escalation is applied to its issue at most once
  (``escalations.analysed_at``, set in the transaction that saves the issue), a cleared
  incident clears once, and the recurring/repeat rules and enrichment recompute from the
  stored data.

* **A failed analysis in a living collector** (the database refused a query, a bug): its
  batches are analysed again at the collector's next refresh (:func:`retry_failed`), up to
  ``MAX_ATTEMPTS`` more times like a catch-up; then the rows stay, logged. Batches analysed
  together whose analysis failed are tried one by one before an attempt is counted, so one
  batch that cannot be analysed does not use up the attempts of the others.

Digests are read back as the analysis reads them (``ingest.DigestSummary``): site, interval
end, cleared incidents, and whether the digest had small incidents or fault blips.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from chargesight.cloud.engine import Engine
from chargesight.cloud.ingest import DigestSummary
from chargesight.cloud.issuestore import Pool
from chargesight.common.logs import get_logger
from chargesight.common.messages import Escalation

log = get_logger(__name__)

ANALYSIS_OWNER_LOCK = 727_012  # pg_advisory_lock(ANALYSIS_OWNER_LOCK, owner): owner alive
CATCH_UP_CHUNK = 2_000  # messages analysed in one on_stored call at catch-up
MAX_ATTEMPTS = 3  # catch-ups of a batch that failed; then it is left alone (and logged)

Conn = psycopg.AsyncConnection[dict[str, Any]]


class AnalysisOwner:
    """This collector's owner number, and its lock held on a connection of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.owner: int | None = None
        self._conn: Conn | None = None

    async def acquire(self) -> int:
        conn = await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, row_factory=dict_row
        )
        try:
            if self.owner is None:
                row = await (
                    await conn.execute("SELECT nextval('analysis_owner_seq') AS n")
                ).fetchone()
                assert row is not None
                self.owner = int(str(row["n"]))
            await conn.execute("SELECT pg_advisory_lock(%s, %s)", (ANALYSIS_OWNER_LOCK, self.owner))
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return self.owner

    async def keep(self) -> None:
        """Take the lock again if its connection was lost (the database restarted): until
        then another collector may analyse this one's batches too, which is harmless."""
        if self._conn is not None and not self._conn.closed:
            try:
                await self._conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                await self._conn.close()
        log.warning("analysis owner lock lost, taking it again", owner=self.owner)
        await self.acquire()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


async def mark_analysed(pool: Pool, keys: list[str]) -> None:
    """The batches ``keys`` were analysed: forget them."""
    if keys:
        async with pool.connection() as conn:
            await conn.execute("DELETE FROM unanalysed WHERE batch_key = ANY(%s)", (keys,))


async def load_stored(conn: Conn, ids: list[str]) -> tuple[list[Escalation], list[DigestSummary]]:
    """The escalations and the digests (as the analysis reads them) stored under ``ids``."""
    cur = await conn.execute("SELECT body FROM escalations WHERE message_id = ANY(%s)", (ids,))
    escalations = [Escalation.model_validate(r["body"]) for r in await cur.fetchall()]
    escalations.sort(key=lambda e: (e.sent_at, e.message_id))
    cur = await conn.execute(
        "SELECT d.site_id, d.interval_end, d.cleared_incidents,"
        " EXISTS (SELECT 1 FROM self_resolved s WHERE s.site_id = d.site_id"
        "   AND s.message_id = d.message_id)"
        " OR EXISTS (SELECT 1 FROM charger_intervals ci WHERE ci.site_id = d.site_id"
        "   AND ci.interval_start = d.interval_start AND ci.message_id = d.message_id"
        "   AND (ci.disconnects <> 0 OR ci.self_resolved <> 0)) AS small,"
        " EXISTS (SELECT 1 FROM self_resolved s WHERE s.site_id = d.site_id"
        "   AND s.message_id = d.message_id AND s.kind <> 'connectivity') AS fault_blips"
        " FROM digests d WHERE d.message_id = ANY(%s) ORDER BY d.interval_end, d.message_id",
        (ids,),
    )
    digests = [
        DigestSummary(
            str(r["site_id"]),
            r["interval_end"],
            tuple(r["cleared_incidents"] or ()),
            bool(r["small"]),
            bool(r["fault_blips"]),
        )
        for r in await cur.fetchall()
    ]
    return escalations, digests


async def catch_up(engine: Engine, url: str, me: int | None) -> int:
    """Analyse what collectors that are gone stored and did not analyse; return how many
    messages. One owner's failure is logged and its rows stay for the next pass.

    The owners' locks are taken on a connection of its own (the engine uses its pool)."""
    async with await psycopg.AsyncConnection.connect(
        url, autocommit=True, row_factory=dict_row
    ) as conn:
        cur = await conn.execute(
            "SELECT DISTINCT owner FROM unanalysed WHERE owner IS DISTINCT FROM %s"
            " AND attempts < %s",
            (me, MAX_ATTEMPTS),
        )
        owners = sorted(int(str(r["owner"])) for r in await cur.fetchall())
        total = 0
        for owner in owners:
            cur = await conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s) AS got", (ANALYSIS_OWNER_LOCK, owner)
            )
            row = await cur.fetchone()
            if row is None or not row["got"]:
                continue  # alive, or another collector is catching it up
            try:
                total += await _catch_up_owner(engine, conn, owner)
            finally:
                await conn.execute(
                    "SELECT pg_advisory_unlock(%s, %s)", (ANALYSIS_OWNER_LOCK, owner)
                )
        return total


async def retry_failed(engine: Engine, url: str, owner: int, keys: list[str]) -> list[str]:
    """Analyse again this collector's batches ``keys``, whose analysis failed; return the
    keys that failed again and may still be tried (fewer than ``MAX_ATTEMPTS``)."""
    async with await psycopg.AsyncConnection.connect(
        url, autocommit=True, row_factory=dict_row
    ) as conn:
        await _catch_up_owner(engine, conn, owner, keys)
        cur = await conn.execute(
            "SELECT batch_key FROM unanalysed WHERE batch_key = ANY(%s) AND attempts < %s"
            " ORDER BY stored_at, batch_key",
            (keys, MAX_ATTEMPTS),
        )
        return [str(r["batch_key"]) for r in await cur.fetchall()]


async def _catch_up_owner(
    engine: Engine, conn: Conn, owner: int, only: list[str] | None = None
) -> int:
    cur = await conn.execute(
        "SELECT batch_key, message_ids FROM unanalysed WHERE owner = %s AND attempts < %s"
        " AND (%s::text[] IS NULL OR batch_key = ANY(%s)) ORDER BY stored_at, batch_key",
        (owner, MAX_ATTEMPTS, only, only),
    )
    rows = [(str(r["batch_key"]), list(r["message_ids"])) for r in await cur.fetchall()]
    alone: set[str] = set()  # batches of a chunk that failed: each is tried on its own
    done = 0
    while rows:
        chunk = [rows.pop(0)]
        if chunk[0][0] not in alone:
            size = len(chunk[0][1])
            while rows and rows[0][0] not in alone and size + len(rows[0][1]) <= CATCH_UP_CHUNK:
                size += len(rows[0][1])
                chunk.append(rows.pop(0))
        keys = [k for k, _ in chunk]
        ids = [i for _, mids in chunk for i in mids]
        try:
            escalations, digests = await load_stored(conn, ids)
            await engine.on_stored(escalations, digests)
        except Exception as exc:  # logged; the rows stay for another pass
            log.error("catch-up analysis failed", owner=owner, batches=len(keys),
                      error=f"{type(exc).__name__}: {exc}", exc_info=True)  # fmt: skip
            if len(chunk) > 1:  # which batch? each on its own, before counting an attempt
                alone.update(keys)
                rows[:0] = chunk
                continue
            await conn.execute(
                "UPDATE unanalysed SET attempts = attempts + 1 WHERE batch_key = ANY(%s)", (keys,)
            )
            continue
        await conn.execute("DELETE FROM unanalysed WHERE batch_key = ANY(%s)", (keys,))
        done += len(ids)
        log.info("caught up on stored messages never analysed", owner=owner,
                 escalations=len(escalations), digests=len(digests))  # fmt: skip
    return done
