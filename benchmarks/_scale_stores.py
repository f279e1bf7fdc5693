"""The stores of benchmarks/scale.py: a grid of N points, the store orch builds of it (a SQLite file
in the size's folder, or a database of a PostgreSQL server), and what the benchmark reads there
(read-only: SQLite's ``mode=ro``, plain SELECTs on PostgreSQL)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

ENTRY = Path(__file__).resolve().parent / "scale_entry.py"
SEEDS = 10  # every grid: settings x 10 seeds
POINT_ROWS = ("SELECT r.run_uuid, r.status, r.start_time, r.end_time, r.lifecycle_stage FROM runs r JOIN tags t "
              "ON t.run_uuid = r.run_uuid AND t.key = 'orch.kind' AND t.value = 'point'")
# what a rerun must leave as it was, on PostgreSQL (SQLite: the file's bytes)
PG_CONTENT = ("SELECT (SELECT count(*) FROM runs), (SELECT md5(string_agg(run_uuid || status || lifecycle_stage || "
              "coalesce(end_time::text, ''), ',' ORDER BY run_uuid)) FROM runs), (SELECT md5(string_agg(run_uuid || "
              "key || coalesce(value, ''), ',' ORDER BY run_uuid, key)) FROM tags), (SELECT count(*) FROM metrics), "
              "(SELECT count(*) FROM params)")


def grid_axes(n: int) -> dict[str, list]:
    """``n / 10`` settings over lr x width x depth (at most 10 values each), for 10 seeds."""
    if n % SEEDS or n < SEEDS:
        raise SystemExit(f"--sizes: {n} is not a multiple of {SEEDS} (settings x {SEEDS} seeds)")
    settings = n // SEEDS
    n_lr = min(10, settings)
    n_width = min(10, settings // n_lr)
    n_depth = settings // (n_lr * n_width)
    if n_lr * n_width * n_depth != settings or n_depth > 10:
        raise SystemExit(f"--sizes: {n} points do not split into lr x width x depth x {SEEDS} seeds; use e.g. 100, "
                         "1000, 10000")
    return {"lr": [round(10 ** (-1 - i / 3), 6) for i in range(n_lr)], "width": [16 * (i + 1) for i in range(n_width)],
            "depth": list(range(1, n_depth + 1))}


class Store:
    """The store of size ``n``: a SQLite file in ``folder`` or, with ``postgres`` (a server's URL
    without a database), the database ``orch_scale_<n>`` on it. ``folder`` holds the grid, the
    entry, the artifacts and ``build.json``."""

    def __init__(self, cache: Path, n: int, postgres: str | None):
        self.n, self.postgres = n, postgres.rstrip("/") if postgres else None
        self.folder = cache / (f"n{n}-pg" if postgres else f"n{n}")
        self.database = f"orch_scale_{n}"
        self.uri = f"{self.postgres}/{self.database}" if self.postgres else f"sqlite:///{self.folder / 'mlflow.db'}"
        self.grid = self.folder / "grid.yaml"

    @property
    def kind(self) -> str:
        return "PostgreSQL" if self.postgres else "SQLite"

    def prepare(self) -> None:
        """The entry beside a grid of ``n`` points; on PostgreSQL, the database (empty) if missing."""
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ENTRY, self.folder / ENTRY.name)
        lines = [f"name: scale-{self.n}", f"entry: {ENTRY.stem}:main", "grid:"]
        lines += [f"  {axis}: {json.dumps(values)}" for axis, values in grid_axes(self.n).items()]
        lines.append(f"seeds: {json.dumps(list(range(SEEDS)))}")
        self.grid.write_text("\n".join(lines) + "\n")
        if self.postgres and not self._admin(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"):
            self._admin(f"CREATE DATABASE {self.database}")

    def exists(self) -> bool:
        if self.postgres:
            return bool(self._admin(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"))
        return (self.folder / "mlflow.db").exists()

    # -- reading
    def rows(self, sql: str, args=(), uri: str | None = None) -> list:
        """The rows of a query (``?`` placeholders) on this store, or on ``uri`` (a copy)."""
        uri = uri or self.uri
        if uri.startswith("sqlite:///"):
            con = sqlite3.connect(f"file:{uri[len('sqlite:///'):]}?mode=ro", uri=True, timeout=30)
            try:
                return con.execute(sql, args).fetchall()
            finally:
                con.close()
        import psycopg

        with psycopg.connect(uri, autocommit=True) as con:
            return con.execute(sql.replace("?", "%s"), args).fetchall()

    def _admin(self, sql: str) -> list:
        """A statement on the server's ``postgres`` database (CREATE / DROP DATABASE need autocommit)."""
        import psycopg

        with psycopg.connect(f"{self.postgres}/postgres", autocommit=True) as con:
            cur = con.execute(sql)
            return cur.fetchall() if cur.description else []

    def size_bytes(self) -> int:
        """The store's size: the SQLite file, or the database less an empty one (template1's size)."""
        if not self.postgres:
            return (self.folder / "mlflow.db").stat().st_size
        ((size, empty),) = self._admin(f"SELECT pg_database_size('{self.database}'), pg_database_size('template1')")
        return size - empty

    def artifact_bytes(self) -> int:
        """Files beside a SQLite store (``mlartifacts``) or in MLflow's default folder under the cwd (``mlruns``)."""
        return sum(f.stat().st_size for d in ("mlartifacts", "mlruns") for f in (self.folder / d).rglob("*")
                   if f.is_file())

    def facts(self) -> dict:
        """Point runs, their span and seconds, the entry's own seconds, the store's sizes."""
        points = [r for r in self.rows(POINT_ROWS) if r[4] == "active"]
        done = [r for r in points if r[1] == "FINISHED" and r[2] and r[3]]
        entry = self.rows("SELECT sum(value), count(*) FROM latest_metrics WHERE key = 'entry_seconds'")[0]
        return {"points": len(points), "finished": len(done),
                "span_s": (max(r[3] for r in done) - min(r[2] for r in done)) / 1000 if done else 0.0,
                "run_s": sum((r[3] - r[2]) / 1000 for r in done), "entry_s": entry[0] or 0.0,
                "db_bytes": self.size_bytes(), "artifact_bytes": self.artifact_bytes(),
                "all_runs": self.rows("SELECT count(*) FROM runs")[0][0]}

    def content(self) -> tuple:
        """What a rerun must not change: (runs, size or rows, digest)."""
        if self.postgres:
            runs, run_digest, tag_digest, metrics, params = self.rows(PG_CONTENT)[0]
            return runs, (metrics, params), f"{run_digest}:{tag_digest}"
        db = self.folder / "mlflow.db"
        return self.rows("SELECT count(*) FROM runs")[0][0], db.stat().st_size, hashlib.sha256(db.read_bytes()).hexdigest()

    # -- a copy with half the points to run again
    @contextlib.contextmanager
    def half_done_copy(self, tmp: Path) -> Iterator[tuple[str, int]]:
        """(URI, newest start time) of a copy of the store in which every other point run is
        marked deleted (MLflow's searches skip deleted runs) and whose artifacts go to ``tmp``."""
        updates = ["UPDATE runs SET lifecycle_stage = 'deleted' WHERE run_uuid = ?",
                   "UPDATE experiments SET artifact_location = ?"]
        if not self.postgres:
            db = tmp / "mlflow.db"
            shutil.copyfile(self.folder / "mlflow.db", db)
            with contextlib.closing(sqlite3.connect(db)) as con, con:
                self._mark(con, updates, tmp)
                newest = con.execute("SELECT max(start_time) FROM runs").fetchone()[0]
            yield f"sqlite:///{db}", newest
            return
        import psycopg

        copy = f"{self.database}_resume_{uuid.uuid4().hex[:6]}"
        self._admin(f"CREATE DATABASE {copy} TEMPLATE {self.database}")
        try:
            uri = f"{self.postgres}/{copy}"
            with psycopg.connect(uri) as con, con.cursor() as cur:
                self._mark(cur, [u.replace("?", "%s") for u in updates], tmp)
                newest = cur.execute("SELECT max(start_time) FROM runs").fetchone()[0]
            yield uri, newest
        finally:
            self._admin(f"DROP DATABASE IF EXISTS {copy} WITH (FORCE)")

    def _mark(self, con, updates: list[str], tmp: Path) -> None:
        ids = [r[0] for r in con.execute(POINT_ROWS + " ORDER BY r.start_time").fetchall()][::2]
        con.executemany(updates[0], [(i,) for i in ids])
        con.execute(updates[1], ((tmp / "mlartifacts").as_uri(),))
