"""The ops HTTP server: health probes, Prometheus metrics, the JSON API and the dashboard."""
