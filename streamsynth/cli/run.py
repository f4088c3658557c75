"""``streamsynth run``: the Kafka worker."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from streamsynth.config import load_settings


def run_command(
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            "-c",
            help="Worker configuration (YAML); STREAMSYNTH_* environment variables override it.",
            envvar="STREAMSYNTH_CONFIG",
        ),
    ],
) -> None:
    """Run the worker: consume documents, call the LLM stages, produce the results.

    Runs until SIGINT/SIGTERM, then drains in-flight records and commits. See
    'streamsynth config example' for every setting.
    """
    settings = load_settings(config)
    # Imported here so that --help and the other commands stay fast.
    from streamsynth.kafka.worker import run_worker

    raise typer.Exit(run_worker(settings))
