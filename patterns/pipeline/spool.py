"""The producer's durable spool: accepted messages kept in sqlite (WAL) until acknowledged or dead.

Each :meth:`Spool.add` commits before ``Producer.send`` returns, so a producer killed with -9 and started again
on the same file sends what was not done. ``synchronous=NORMAL`` in WAL mode survives a killed process (the
WAL is written before the commit returns); an operating-system crash may lose the last commits.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence

from zmqkit.errors import ConfigurationError

__all__ = ["Spool"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    codec INTEGER NOT NULL,
    payload BLOB NOT NULL,
    dead INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT ''
)
"""
# Dead letters another process (``zmqkit dead resubmit``) asked the running producer to send again.
_RESUBMITS = "CREATE TABLE IF NOT EXISTS resubmits (id INTEGER PRIMARY KEY)"


class Spool:
    """A sqlite file of unfinished messages; safe to share between the caller's and the I/O thread.

    >>> import tempfile, os
    >>> s = Spool(os.path.join(tempfile.mkdtemp(), "work.db"))
    >>> s.add(0, b"job")
    1
    >>> s.ack([1]); list(s.pending())
    []
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.execute(_RESUBMITS)
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open spool {self.path!r}: {exc}") from None
        # One connection, used from two threads: the lock keeps each statement whole.
        self._lock = threading.Lock()

    def add(self, codec: int, payload: bytes) -> int:
        """Store a message (committed on return); return its id."""
        with self._lock:
            cur = self._db.execute("INSERT INTO messages (codec, payload) VALUES (?, ?)", (codec, payload))
            return int(cur.lastrowid or 0)

    def ack(self, ids: Sequence[int]) -> None:
        """Forget finished messages."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])
            self._db.execute("COMMIT")

    def dead(self, msg_id: int, attempts: int, error: str) -> None:
        """Keep a message as a dead letter."""
        with self._lock:
            self._db.execute(
                "UPDATE messages SET dead = 1, attempts = ?, error = ? WHERE id = ?", (attempts, error, msg_id)
            )

    def retried(self, msg_id: int, attempts: int) -> None:
        """Record that ``msg_id`` failed ``attempts`` times so far (a restart carries on from there)."""
        with self._lock:
            self._db.execute("UPDATE messages SET attempts = ? WHERE id = ?", (attempts, msg_id))

    def revive(self, msg_id: int) -> None:
        """Make a dead letter pending again."""
        with self._lock:
            self._db.execute("UPDATE messages SET dead = 0, attempts = 0, error = '' WHERE id = ?", (msg_id,))

    def pending(self) -> Iterable[tuple[int, int, bytes, int]]:
        """``(id, codec, payload, attempts so far)`` of every unfinished message, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, codec, payload, attempts FROM messages WHERE dead = 0 ORDER BY id"
            ).fetchall()
        return [(int(i), int(c), bytes(p), int(a)) for i, c, p, a in rows]

    def dead_letters(self, offset: int = 0, limit: int | None = None) -> Iterable[tuple[int, int, bytes, int, str]]:
        """``(id, codec, payload, attempts, error)`` of dead letters, oldest first: ``limit`` of them (all when
        None) after skipping ``offset``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, codec, payload, attempts, error FROM messages WHERE dead = 1 ORDER BY id LIMIT ? OFFSET ?",
                (-1 if limit is None else limit, offset),
            ).fetchall()
        return [(int(i), int(c), bytes(p), int(a), str(e)) for i, c, p, a, e in rows]

    def dead_letter(self, msg_id: int) -> tuple[int, bytes] | None:
        """``(codec, payload)`` of dead letter ``msg_id``, or None when there is no such dead letter."""
        with self._lock:
            row = self._db.execute(
                "SELECT codec, payload FROM messages WHERE id = ? AND dead = 1", (msg_id,)
            ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def dead_count(self) -> int:
        """How many dead letters the spool holds."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM messages WHERE dead = 1").fetchone()[0])

    def ask_resubmit(self, msg_id: int) -> bool:
        """Ask the producer using this spool (now, or when it next starts) to send dead letter ``msg_id`` again;
        False when there is no such dead letter. Safe from another process while the producer runs."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO resubmits (id) SELECT id FROM messages WHERE id = ? AND dead = 1", (msg_id,)
            )
            return (
                cur.rowcount > 0
                or self._db.execute("SELECT 1 FROM resubmits WHERE id = ?", (msg_id,)).fetchone() is not None
            )

    def take_resubmits(self) -> list[int]:
        """The ids asked for by :meth:`ask_resubmit` since the last call (each given once)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                ids = [int(row[0]) for row in self._db.execute("SELECT id FROM resubmits ORDER BY id")]
                self._db.execute("DELETE FROM resubmits")
            finally:
                self._db.execute("COMMIT")
        return ids

    def purge(self, ids: Sequence[int] | None = None) -> int:
        """Delete dead letters ``ids`` (every dead letter when None); return how many went."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if ids is None:
                    gone = self._db.execute("DELETE FROM messages WHERE dead = 1").rowcount
                else:
                    gone = sum(
                        self._db.execute("DELETE FROM messages WHERE id = ? AND dead = 1", (i,)).rowcount for i in ids
                    )
                self._db.execute("DELETE FROM resubmits WHERE id NOT IN (SELECT id FROM messages)")
            finally:
                self._db.execute("COMMIT")
        return int(gone)

    def close(self) -> None:
        with self._lock:
            self._db.close()
