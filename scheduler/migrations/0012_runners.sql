-- The runner fleet, as runners report themselves on the runner queue. Only the scheduler writes
-- it; a runner silent for longer than SLIPWAY_RUNNER_LOST_SECONDS is marked 'lost'.
CREATE TABLE runners (
    id            text PRIMARY KEY,
    version       text NOT NULL,
    host          text NOT NULL,
    slots         integer NOT NULL CHECK (slots >= 0),
    labels        jsonb NOT NULL DEFAULT '[]'::jsonb,
    state         text NOT NULL CHECK (state IN ('idle', 'busy', 'draining', 'lost', 'stopped')),
    jobs          uuid[] NOT NULL DEFAULT '{}',
    started_at    timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL,
    -- The runner's clock on its last report; an older report than this is ignored.
    reported_at   timestamptz NOT NULL
);
CREATE INDEX runners_seen ON runners (last_seen_at);
