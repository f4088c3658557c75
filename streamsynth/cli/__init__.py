"""The ``streamsynth`` command line (the app is in :mod:`streamsynth.cli.main`).

``streamsynth run`` is the process that ships. Importing typer, rich and the
command modules takes a second or more on a busy machine, and a SIGTERM in that
time must still mean a graceful exit 0, not death by the default handler; so the
capture of :mod:`streamsynth.kafka.runtime` starts here, in the first of our
modules the console script imports, and only for ``run``.
"""

from __future__ import annotations

import sys

if sys.argv[1:2] == ["run"]:
    from streamsynth.kafka.runtime import capture_early_signals

    capture_early_signals()
