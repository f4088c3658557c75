"""``streamsynth run``: the Kafka worker (the process that ships: Docker, compose, Helm).

The whole process life is :mod:`streamsynth.kafka.runtime`, shared with ``python -m
streamsynth.kafka``. The early signal capture is installed by ``streamsynth.cli``'s
package import, before typer and the command modules load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


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

    Runs until SIGINT/SIGTERM, then drains in-flight records and commits. Exits 0
    after a graceful stop, 1 when the broker fails, 2 on an invalid configuration.
    See 'streamsynth config example' for every setting.
    """
    # Imported here so that --help and the other commands stay fast.
    from streamsynth.kafka.runtime import run

    raise typer.Exit(run(config))
