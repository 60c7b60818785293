"""The ingest service: public intake of investigations (API and webhooks) behind Envoy."""
