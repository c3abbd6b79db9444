-- Deletion: tombstones, the durable edge purge queue, bulk deletion jobs.

-- A deleted recording keeps its row as a tombstone (state 'deleted'). Its objects leave the
-- bucket after the tombstone is committed; until DeleteObjects has succeeded,
-- objects_deleted is FALSE and the deleter keeps trying (a crash in between loses nothing).
ALTER TABLE recordings ADD COLUMN deleted_at BIGINT;
ALTER TABLE recordings ADD COLUMN deleted_by TEXT;
ALTER TABLE recordings ADD COLUMN objects_deleted BOOLEAN NOT NULL DEFAULT TRUE;

CREATE INDEX recordings_by_commit ON recordings (env, committed_at);
CREATE INDEX recordings_objects_pending ON recordings (objects_deleted);

-- Purges an edge has not acknowledged yet: retried until it answers 2xx.
CREATE TABLE purges (
    admin TEXT NOT NULL,
    region TEXT NOT NULL,
    account TEXT NOT NULL,
    name TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT,
    queued_at BIGINT NOT NULL,
    PRIMARY KEY (admin, region, account, name)
);

CREATE INDEX purges_due ON purges (next_attempt_at);

-- DELETE /v1/environments/{env}/recordings?before=…: progress is committed with each batch.
CREATE TABLE delete_jobs (
    id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    before_at BIGINT NOT NULL,
    -- running, done
    state TEXT NOT NULL,
    total BIGINT NOT NULL,
    deleted BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
