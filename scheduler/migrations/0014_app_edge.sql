-- How the edge proxy serves an app (docker target): {"hosts": [...], "drain_seconds": N}, each optional.
ALTER TABLE apps ADD COLUMN edge jsonb;
