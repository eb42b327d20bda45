-- Releases: every deployment records the configuration it deploys with (an immutable snapshot:
-- plain variables and settings in `config`, secret values sealed in `sealed`), numbered per app.
-- Its image is the deployment's (`image`, `image_digest`). A rollback copies the release it
-- returns to; a configuration change records the app's new configuration with the live image.
CREATE TABLE releases (
    deployment_id uuid PRIMARY KEY REFERENCES deployments (id) ON DELETE CASCADE,
    app_id        uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    version       integer NOT NULL CHECK (version > 0),
    config        jsonb NOT NULL,
    sealed        text NOT NULL,
    reason        text NOT NULL,
    created_by    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (app_id, version)
);

-- A configuration change deploys the live commit again, like a rollback: not deduplicated by commit.
DROP INDEX deployments_once_per_commit;
CREATE UNIQUE INDEX deployments_once_per_commit ON deployments (app_id, sha, environment)
    WHERE source NOT IN ('rollback', 'config') AND sha <> '';
