-- The commit a pushed branch pointed at before the push (not for forced pushes): links a
-- deployment to its parent push, so a delayed webhook of an older commit is never deployed over
-- a newer one already recorded.
ALTER TABLE deployments ADD COLUMN before_sha text;
CREATE INDEX deployments_before ON deployments (app_id, before_sha) WHERE before_sha IS NOT NULL;
