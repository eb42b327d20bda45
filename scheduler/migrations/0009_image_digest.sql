-- The digest Slipway itself pushed for a deployment's image. A retry or a rollback skips the
-- build only when the registry still holds exactly this digest.
ALTER TABLE deployments ADD COLUMN image_digest text;
