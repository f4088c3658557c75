"""``python -m streamsynth.kafka --config FILE``: run one worker until SIGTERM/SIGINT.

The same process as ``streamsynth run``; see :mod:`streamsynth.kafka.runtime`.
"""

from __future__ import annotations

import sys

from streamsynth.kafka.runtime import capture_early_signals, main

if __name__ == "__main__":
    capture_early_signals()  # before main() imports aiokafka and the LLM stack
    sys.exit(main())
