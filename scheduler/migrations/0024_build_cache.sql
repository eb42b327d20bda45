-- What the layer cache did in a deployment's build: {"reused", "rebuilt", "first_miss"}.
ALTER TABLE deployments ADD COLUMN cache jsonb;
