-- The lifecycle as one guarded write: every write of a deployment's state bumps `version` and
-- is applied only if the row still has the state, attempt and version it was decided on.
-- `claim_id` is the runner claim granted for the attempt; a cancel names who asked and why.
ALTER TABLE deployments ADD COLUMN version bigint NOT NULL DEFAULT 0;
ALTER TABLE deployments ADD COLUMN claim_id uuid;
ALTER TABLE deployments ADD COLUMN cancel_by text;
ALTER TABLE deployments ADD COLUMN cancel_reason text;
-- Rows written by the earlier SQL that a superseded deployment was cancelled by.
UPDATE deployments SET cancel_by = 'slipway', cancel_reason = error_message, error_message = NULL
 WHERE state = 'cancelled' AND cancel_by IS NULL;
CREATE INDEX deployments_app_active ON deployments (app_id, environment) WHERE state IN ('queued', 'running');
