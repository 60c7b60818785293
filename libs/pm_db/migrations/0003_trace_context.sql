-- The W3C trace context (traceparent, tracestate) of the request that started an investigation.
-- Work no message carries (the reconciler's re-drives, deliveries, reports written after a
-- restart) continues the investigation's trace from here, so one trace id runs from the REST
-- request to the delivery.
ALTER TABLE investigations ADD COLUMN trace_context jsonb NOT NULL DEFAULT '{}'::jsonb;
