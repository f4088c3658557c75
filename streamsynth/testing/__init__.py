"""The test harness: worker processes, topic I/O and pytest fixtures (not used in production).

:mod:`streamsynth.testing.harness` runs workers and reads their topics (tests, benchmarks,
the demo); :mod:`streamsynth.testing.tools` finds or provisions the external tools the
tests need (Prometheus, promtool, npm packages); :mod:`streamsynth.testing.fixtures` is the
pytest plugin. What users run locally (embedded broker, LLM simulator, local model) lives
in :mod:`streamsynth.local`.
"""
