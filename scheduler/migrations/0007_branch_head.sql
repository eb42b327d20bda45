-- A manual deploy of the branch head is recorded before anyone knows the commit: `sha` is empty
-- until the runner resolved the branch (the scheduler never calls git in a request). Such a
-- deployment is not deduplicated by commit.
DROP INDEX deployments_once_per_commit;
CREATE UNIQUE INDEX deployments_once_per_commit ON deployments (app_id, sha, environment)
    WHERE source <> 'rollback' AND sha <> '';
