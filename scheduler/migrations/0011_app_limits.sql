-- An app's own container limits (docker target): {"memory_mb", "millicpus", "pids"}, each optional.
ALTER TABLE apps ADD COLUMN limits jsonb;
