-- A log line longer than one message goes in parts; `more` marks every part but the last.
ALTER TABLE log_lines ADD COLUMN more boolean NOT NULL DEFAULT false;
-- Runner messages that could not be applied (after bounded retries), with why: kept for
-- operators, never retried, never blocking the messages behind them.
CREATE TABLE dead_letters (
    id            bigserial PRIMARY KEY,
    received_at   timestamptz NOT NULL DEFAULT now(),
    deployment_id uuid,
    reason        text NOT NULL,
    body          bytea NOT NULL
);
