-- Database snapshots (`pg_dump -Fc`) a runner took before a deployment's release command: the
-- file's name under the runners' snapshot directory, its size, who took it. A snapshot the
-- runner's retention removed keeps its row with `pruned_at` set.
CREATE TABLE db_snapshots (
    id uuid PRIMARY KEY,
    app_id uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    deployment_id uuid NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    attempt int NOT NULL,
    name text NOT NULL,
    bytes bigint NOT NULL,
    runner text,
    created_at timestamptz NOT NULL DEFAULT now(),
    pruned_at timestamptz,
    UNIQUE (app_id, name)
);
CREATE INDEX db_snapshots_app ON db_snapshots (app_id, created_at DESC);

-- A restore deploys the live release again after restoring a snapshot into its database:
-- {"id", "name"} of the snapshot.
ALTER TABLE deployments ADD COLUMN restore_of jsonb;

DROP INDEX deployments_once_per_commit;
CREATE UNIQUE INDEX deployments_once_per_commit ON deployments (app_id, sha, environment)
    WHERE source NOT IN ('rollback', 'config', 'promotion', 'restore') AND sha <> '';
