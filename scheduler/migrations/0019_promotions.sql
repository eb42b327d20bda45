-- A promotion deploys another app's release (the same repository, another environment) by its
-- image digest: no clone, no build. `promoted_from` names it: {"app", "deployment_id",
-- "version", "digest"}; the source side finds its promotions by it.
ALTER TABLE deployments ADD COLUMN promoted_from jsonb;
CREATE INDEX deployments_promoted_from ON deployments ((promoted_from->>'deployment_id')) WHERE promoted_from IS NOT NULL;

-- Like rollbacks and configuration changes, a promotion may deploy a commit the app has had.
DROP INDEX deployments_once_per_commit;
CREATE UNIQUE INDEX deployments_once_per_commit ON deployments (app_id, sha, environment)
    WHERE source NOT IN ('rollback', 'config', 'promotion') AND sha <> '';
