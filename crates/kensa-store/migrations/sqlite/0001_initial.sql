-- Kensa's store schema on SQLite. Text columns use SQLite's default BINARY collation, which
-- compares UTF-8 bytes: the same order as PostgreSQL's COLLATE "C" and Rust's `str` ordering,
-- so both backends paginate identically.

-- The current state: one row per resource, its value as the canonical JSON text the API wrote
-- (TEXT, not a JSON type, so field order survives a round trip).
CREATE TABLE resources (
    kind      TEXT    NOT NULL,
    namespace TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    value     TEXT    NOT NULL,
    revision  INTEGER NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;

-- "Is this namespace empty?" must not scan every kind.
CREATE INDEX resources_by_namespace ON resources (namespace);

-- The change feed: one row per revision, pruned from the old end by `prune_changes`.
CREATE TABLE changes (
    revision  INTEGER PRIMARY KEY,
    op        TEXT    NOT NULL CHECK (op IN ('put', 'delete')),
    kind      TEXT    NOT NULL,
    namespace TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    value     TEXT
);

-- The store's single revision counter. It is kept apart from `changes` because pruning the
-- feed must not lower the revision, and it is updated inside each write transaction so a
-- failed write leaves no gap in the revision sequence.
CREATE TABLE store_revision (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
);
INSERT INTO store_revision (id, revision) VALUES (1, 0);
