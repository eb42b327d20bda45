-- Where deployment events go: outbound webhooks signed as Standard Webhooks, and Slack incoming
-- webhooks; for every app (`app_id` NULL) or one. The URL (a Slack URL is a secret) and the
-- signing secret are sealed together ({"url", "secret"}); `url_shown` is scheme, host and port.
CREATE TABLE notification_targets (
    id uuid PRIMARY KEY,
    name text NOT NULL UNIQUE,
    app_id uuid REFERENCES apps (id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('webhook', 'slack')),
    url_shown text NOT NULL,
    sealed text NOT NULL,
    events text[] NOT NULL,
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The outbox of notifications: written in the transaction of the state change it tells of, so
-- none is lost; sent by any scheduler (claimed with SKIP LOCKED), retried with backoff until
-- delivered or out of attempts. `id` is the `webhook-id` (the receiver's dedup key).
CREATE TABLE deliveries (
    id uuid PRIMARY KEY,
    target_id uuid NOT NULL REFERENCES notification_targets (id) ON DELETE CASCADE,
    deployment_id uuid REFERENCES deployments (id) ON DELETE CASCADE,
    event text NOT NULL,
    payload jsonb NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts int NOT NULL DEFAULT 0,
    next_at timestamptz NOT NULL DEFAULT now(),
    last_status int,
    last_error text,
    last_response text,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);
CREATE INDEX deliveries_due ON deliveries (next_at) WHERE state = 'pending';
CREATE INDEX deliveries_target ON deliveries (target_id, created_at DESC);
