-- Kensa's store schema on PostgreSQL. Every key column is COLLATE "C" so ordering and range
-- comparisons are bytewise: the same order as SQLite's BINARY collation and Rust's `str`
-- ordering, whatever the database's locale, so both backends paginate identically and the
-- prefix range `name >= prefix AND name < successor(prefix)` is exact.

-- The current state: one row per resource. Values are TEXT, not JSONB: JSONB reorders object
-- keys, and the API must return fields in Sensu's order.
CREATE TABLE resources (
    kind      TEXT COLLATE "C" NOT NULL,
    namespace TEXT COLLATE "C" NOT NULL,
    name      TEXT COLLATE "C" NOT NULL,
    value     TEXT             NOT NULL,
    revision  BIGINT           NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);

-- "Is this namespace empty?" must not scan every kind.
CREATE INDEX resources_by_namespace ON resources (namespace);

-- The change feed: one row per revision, pruned from the old end by `prune_changes`.
CREATE TABLE changes (
    revision  BIGINT           PRIMARY KEY,
    op        TEXT             NOT NULL CHECK (op IN ('put', 'delete')),
    kind      TEXT COLLATE "C" NOT NULL,
    namespace TEXT COLLATE "C" NOT NULL,
    name      TEXT COLLATE "C" NOT NULL,
    value     TEXT
);

-- The store's single revision counter, and the write lock. Every write transaction starts by
-- updating this row, which row-locks it until commit: writers are serialized, so revisions are
-- allocated and committed in the same order and a follower reading `revision > last` can
-- never see revision N+1 before N is visible (a BIGSERIAL would allow exactly that). Because
-- the counter is transactional, a rolled-back write leaves no gap either.
CREATE TABLE store_revision (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    revision  BIGINT  NOT NULL
);
INSERT INTO store_revision (singleton, revision) VALUES (TRUE, 0);
