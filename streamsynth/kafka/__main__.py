"""``python -m streamsynth.kafka --config FILE``: run one worker until SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import sys
from types import FrameType

# A SIGTERM that arrives while the (slow) imports below run must still mean "stop
# gracefully, exit 0", not death by the default handler: record it until the
# worker's own handlers take over.
_early_signals: list[int] = []


def _remember(signum: int, frame: FrameType | None) -> None:
    _early_signals.append(signum)


signal.signal(signal.SIGTERM, _remember)
signal.signal(signal.SIGINT, _remember)

import argparse  # noqa: E402

from streamsynth.config import ConfigError, load_settings  # noqa: E402
from streamsynth.kafka.worker import run_worker  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamsynth.kafka", description=__doc__)
    parser.add_argument("--config", required=True, help="path of the YAML configuration")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return run_worker(settings, stop_requested=lambda: bool(_early_signals))


if __name__ == "__main__":
    sys.exit(main())
