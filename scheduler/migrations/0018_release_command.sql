-- What a deployment's release command did: {"attempt", "state": started|succeeded|failed,
-- "exit_code"}. Written once as `started` before it runs and once with its end, so a retried
-- attempt never runs it again.
ALTER TABLE deployments ADD COLUMN release_command jsonb;
