-- The push service's state. Portable SQL (SQLite now, PostgreSQL for a fleet): times are
-- BIGINT milliseconds since the Unix epoch, JSON is TEXT.

CREATE TABLE environments (
    name TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    region TEXT NOT NULL,
    complimentary BOOLEAN NOT NULL,
    webhook_url TEXT,
    webhook_secret TEXT,
    -- The customer's own destinations, secrets included (the spool is as private as the config).
    destinations TEXT NOT NULL,
    delete_after_days BIGINT,
    updated_at BIGINT NOT NULL
);

CREATE TABLE recordings (
    env TEXT NOT NULL,
    name TEXT NOT NULL,
    account TEXT NOT NULL,
    region TEXT NOT NULL,
    -- open (receiving files), queued, pushing, retrying, pushed, failed, skipped
    state TEXT NOT NULL,
    committed_at BIGINT,
    -- A failed recording's files are kept until then.
    keep_until BIGINT,
    -- The spool still holds the files.
    files_kept BOOLEAN NOT NULL,
    PRIMARY KEY (env, name)
);

CREATE INDEX recordings_by_state ON recordings (state, keep_until);

CREATE TABLE files (
    env TEXT NOT NULL,
    name TEXT NOT NULL,
    suffix TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (env, name, suffix)
);

-- One row per recording and destination: its attempt series and outcome.
CREATE TABLE pushes (
    env TEXT NOT NULL,
    name TEXT NOT NULL,
    destination TEXT NOT NULL,
    -- Where: the complimentary bucket of a region, or the customer's destination (JSON).
    target TEXT NOT NULL,
    -- queued, pushing, retrying, pushed, failed
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    series_start BIGINT NOT NULL,
    next_attempt_at BIGINT,
    last_error TEXT,
    pushed_at BIGINT,
    -- A manual push: a success overwrote objects the edges may cache.
    manual BOOLEAN NOT NULL,
    PRIMARY KEY (env, name, destination)
);

CREATE INDEX pushes_due ON pushes (state, next_attempt_at);

-- Every attempt's error, kept for operators.
CREATE TABLE attempt_errors (
    env TEXT NOT NULL,
    name TEXT NOT NULL,
    destination TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    at BIGINT NOT NULL,
    code TEXT NOT NULL,
    error TEXT NOT NULL
);

-- Multipart uploads about to start or started, not yet completed or aborted: aborted at
-- start-up. The row is written before CreateMultipartUpload, so a crash before its answer
-- still leaves a trace (the upload is then found with ListMultipartUploads).
CREATE TABLE multipart_uploads (
    id TEXT PRIMARY KEY,
    upload_id TEXT,
    env TEXT NOT NULL,
    name TEXT NOT NULL,
    destination TEXT NOT NULL,
    bucket TEXT NOT NULL,
    object_key TEXT NOT NULL
);

CREATE TABLE deliveries (
    id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    name TEXT NOT NULL,
    destination TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    body TEXT NOT NULL,
    -- pending, delivered, failed
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT,
    last_error TEXT
);

CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
