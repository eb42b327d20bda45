-- Apps, deployments (which are also the outbox), their steps and their log lines.

CREATE TABLE apps (
    id             uuid PRIMARY KEY,
    name           text NOT NULL UNIQUE,
    repo_url       text NOT NULL,
    repo_key       text NOT NULL,           -- repo_url normalized for matching webhooks
    branch         text NOT NULL,
    environment    text NOT NULL,
    target         text NOT NULL CHECK (target IN ('docker', 'kubernetes')),
    health_path    text NOT NULL,
    port           integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    env            jsonb NOT NULL DEFAULT '{}'::jsonb,
    webhook_secret text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX apps_repo_key ON apps (repo_key);

CREATE TABLE deployments (
    id            uuid PRIMARY KEY,
    app_id        uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    sha           text NOT NULL,
    environment   text NOT NULL,
    git_ref       text NOT NULL,
    source        text NOT NULL,            -- 'github', 'manual', ...
    delivery_id   text,                     -- the forge's delivery id, when there is one
    state         text NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    attempt       integer NOT NULL DEFAULT 1,
    runner_id     text,
    current_step  text,
    published_at  timestamptz,              -- outbox: NULL until the relay's publish was confirmed
    heartbeat_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    image         text,
    url           text,
    error_step    text,
    error_cause   text,
    error_message text,
    UNIQUE (app_id, sha, environment)
);
CREATE INDEX deployments_outbox ON deployments (created_at) WHERE state = 'queued' AND published_at IS NULL;
CREATE INDEX deployments_running ON deployments (heartbeat_at) WHERE state = 'running';
CREATE INDEX deployments_app ON deployments (app_id, created_at DESC);

CREATE TABLE deployment_steps (
    deployment_id uuid NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    step          text NOT NULL,
    status        text NOT NULL,
    started_at    timestamptz,
    finished_at   timestamptz,
    error         text,
    PRIMARY KEY (deployment_id, attempt, step)
);

CREATE TABLE log_lines (
    deployment_id uuid NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    seq           bigint NOT NULL,
    step          text,
    line          text NOT NULL,
    ts            timestamptz NOT NULL,
    PRIMARY KEY (deployment_id, attempt, seq)
);
