-- Log lines are stored as the batches runners send: one row a batch (up to 20,000 lines), not
-- one a line, so a flood of output costs a few writes. Seqs are explicit (a batch need not be
-- contiguous); a batch sent twice is the same row; overlapping batches are read without repeats.
CREATE TABLE log_chunks (
    deployment_id uuid NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    first_seq     bigint NOT NULL,
    last_seq      bigint NOT NULL,
    seqs          bigint[] NOT NULL,
    steps         text[] NOT NULL,
    lines         text[] NOT NULL,
    ts            timestamptz[] NOT NULL,
    more          boolean[] NOT NULL,
    PRIMARY KEY (deployment_id, attempt, first_seq)
);
-- Out of line but uncompressed: compressing each batch cost more time than the bytes it saved.
ALTER TABLE log_chunks ALTER COLUMN seqs SET STORAGE EXTERNAL, ALTER COLUMN steps SET STORAGE EXTERNAL,
    ALTER COLUMN lines SET STORAGE EXTERNAL, ALTER COLUMN ts SET STORAGE EXTERNAL, ALTER COLUMN more SET STORAGE EXTERNAL;
INSERT INTO log_chunks (deployment_id, attempt, first_seq, last_seq, seqs, steps, lines, ts, more)
SELECT deployment_id, attempt, seq, seq, ARRAY[seq], ARRAY[step], ARRAY[line], ARRAY[ts], ARRAY[more] FROM log_lines;
DROP TABLE log_lines;
-- One row a line, without repeats, for reading by hand.
CREATE VIEW log_lines AS
SELECT DISTINCT ON (c.deployment_id, c.attempt, u.seq)
       c.deployment_id, c.attempt, u.seq, u.step, u.line, u.ts, u.more
FROM log_chunks c, unnest(c.seqs, c.steps, c.lines, c.ts, c.more) AS u(seq, step, line, ts, more)
ORDER BY c.deployment_id, c.attempt, u.seq, c.first_seq;
