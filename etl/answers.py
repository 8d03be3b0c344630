"""A few answers from the warehouse, so a newcomer sees `make ingest` work.

``python -m etl.answers --db URL [--table comments]`` prints rows per day and
the top subreddits (any dataset with ``created_utc`` and ``subreddit``).
"""

from __future__ import annotations

import argparse

import sqlalchemy as sa

QUERIES = {
    "rows per day": "SELECT CAST(created_utc AS DATE) AS day, count(*) AS rows FROM {t} "
                    "GROUP BY 1 ORDER BY 1 LIMIT 14",
    "top subreddits": "SELECT subreddit, count(*) AS rows FROM {t} GROUP BY 1 "
                      "ORDER BY 2 DESC, 1 LIMIT 10",
    "deleted authors": "SELECT count(*) FILTER (WHERE author IS NULL) AS deleted, "
                       "count(*) AS rows FROM {t}",
}


def answers(db: str, table: str) -> str:
    """The QUERIES' results as text."""
    engine = sa.create_engine(db, poolclass=sa.pool.NullPool)
    out = []
    try:
        with engine.connect() as conn:
            quoted = conn.dialect.identifier_preparer.quote(table)
            for title, sql in QUERIES.items():
                result = conn.execute(sa.text(sql.format(t=quoted)))
                out.append(f"-- {title}")
                out.append("  ".join(f"{c:>12}" for c in result.keys()))
                out += ["  ".join(f"{v!s:>12}" for v in row) for row in result]
    finally:
        engine.dispose()
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="duckdb:///data/warehouse.duckdb")
    p.add_argument("--table", default="comments")
    args = p.parse_args()
    print(answers(args.db, args.table))


if __name__ == "__main__":
    main()
