-- An attempt retried after an infrastructure failure waits until not_before before the relay publishes it.
ALTER TABLE deployments ADD COLUMN not_before timestamptz;
