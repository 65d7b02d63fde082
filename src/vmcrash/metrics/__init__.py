"""Metrics for Prometheus derived from the catalogue (the daemon serves them at metrics_listen)."""
