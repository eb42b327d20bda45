-- Kubernetes settings of an app, deployments that ended rolled back, and rollbacks: a rollback
-- redeploys an earlier commit, so only forge and manual deployments are unique per commit.
ALTER TABLE apps ADD COLUMN kube_settings jsonb;
ALTER TABLE deployments ADD COLUMN rolled_back boolean NOT NULL DEFAULT false;
ALTER TABLE deployments DROP CONSTRAINT deployments_app_id_sha_environment_key;
CREATE UNIQUE INDEX deployments_once_per_commit ON deployments (app_id, sha, environment) WHERE source <> 'rollback';
