-- Early uploads: a large file's multipart upload starts while the file still arrives, before
-- its recording is committed, so no push row names its destination yet. Such a row carries
-- its target (JSON, as pushes.target) and its node itself, and is aborted at start-up too.
ALTER TABLE multipart_uploads ADD COLUMN target TEXT;
ALTER TABLE multipart_uploads ADD COLUMN node TEXT;
