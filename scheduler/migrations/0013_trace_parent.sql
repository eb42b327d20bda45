-- Each deployment's trace: the W3C traceparent of its root span, chosen when it is recorded,
-- sent to runners in the job's message headers, and exported when the deployment ends.
ALTER TABLE deployments ADD COLUMN trace_parent text;
