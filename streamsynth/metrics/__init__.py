"""Prometheus metrics, health endpoints and the console summary."""

from streamsynth.metrics.registry import Metrics, PrometheusLLMObserver

__all__ = ["Metrics", "PrometheusLLMObserver"]
