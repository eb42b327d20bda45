-- API tokens (only their SHA-256 is stored), who asked for each deployment, and app secrets
-- sealed by the scheduler (apps.sealed); the plaintext webhook_secret column is emptied at
-- start-up once its value is sealed.

CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    role         text NOT NULL CHECK (role IN ('admin', 'deployer', 'viewer')),
    app          text,                      -- the one app it may act on; NULL for every app
    hash         bytea NOT NULL UNIQUE,     -- SHA-256 of the token
    created_by   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);
CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL;

ALTER TABLE deployments ADD COLUMN created_by text;

ALTER TABLE apps ADD COLUMN sealed text;
ALTER TABLE apps ADD COLUMN secret_names text[] NOT NULL DEFAULT '{}';
ALTER TABLE apps ADD COLUMN git_username text;
ALTER TABLE apps ALTER COLUMN webhook_secret DROP NOT NULL;
