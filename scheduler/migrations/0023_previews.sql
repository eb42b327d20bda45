-- Preview environments: an app's settings for them ({"enabled", "forks", "max", "ttl_seconds",
-- "env"}), and one row per pull request of an app. A preview's deployments are the app's, in
-- environment `pr-<number>`; its teardown is a deployment there too (source `teardown`, no sha).
ALTER TABLE apps ADD COLUMN previews jsonb;

CREATE TABLE previews (
    app_id        uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    number        bigint NOT NULL CHECK (number > 0),
    environment   text NOT NULL,
    state         text NOT NULL CHECK (state IN ('open', 'closed', 'expired', 'refused')),
    reason        text,
    forge         text NOT NULL,
    head_sha      text NOT NULL,
    head_ref      text NOT NULL,
    title         text,
    author        text,
    from_fork     boolean NOT NULL DEFAULT false,
    deployment_id uuid REFERENCES deployments (id) ON DELETE SET NULL,
    opened_at     timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    closed_at     timestamptz,
    PRIMARY KEY (app_id, number)
);

CREATE INDEX previews_open ON previews (app_id) WHERE state = 'open';

-- A preview's deployments are deduplicated by its row (the same head of an open request is
-- one deployment), not by commit: a request closed and reopened at the same head deploys again.
DROP INDEX deployments_once_per_commit;
CREATE UNIQUE INDEX deployments_once_per_commit ON deployments (app_id, sha, environment)
    WHERE source NOT IN ('rollback', 'config', 'promotion', 'restore', 'preview', 'teardown') AND sha <> '';
