-- Watch paths: the globs of the files whose changes deploy an app (empty: every push), and,
-- per deployment of a push not yet checked against them, what the runner needs to check it
-- (the push's changed files when the forge listed them all).
ALTER TABLE apps ADD COLUMN watch_paths text[] NOT NULL DEFAULT '{}';
ALTER TABLE deployments ADD COLUMN watch_check jsonb;
