-- Who pushed the commit a forge push deploys, as the forge names them (for notifications).
ALTER TABLE deployments ADD COLUMN pushed_by text;

-- Where an app's deployments are reported as commit statuses: {"forge", "api_url", "repo"}
-- (the token is sealed with the app's secrets).
ALTER TABLE apps ADD COLUMN commit_status jsonb;

-- Commit statuses travel through the deliveries outbox too: kind `status`, for an app, with no
-- notification target.
ALTER TABLE deliveries ALTER COLUMN target_id DROP NOT NULL;
ALTER TABLE deliveries ADD COLUMN app_id uuid REFERENCES apps (id) ON DELETE CASCADE;
ALTER TABLE deliveries ADD COLUMN kind text NOT NULL DEFAULT 'target' CHECK (kind IN ('target', 'status'));
ALTER TABLE deliveries ADD CONSTRAINT deliveries_for_something CHECK (target_id IS NOT NULL OR app_id IS NOT NULL);
