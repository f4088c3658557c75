"""``streamsynth bench NAME [ARGS...]``: run one of the repository's benchmarks.

The benchmarks live in ``benchmarks/`` at the repository root, not in the
installed package (they need the test tooling and write result files). The
directory is looked up in the current working directory first, then next to the
package (an editable install from a checkout).

SIGTERM (``timeout``, an orchestrator) ends a benchmark as Ctrl-C does: its
cleanups run (brokers, simulators, temporary files) and the exit status is 143
(:func:`~streamsynth.local.process.sigterm_exits`).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from streamsynth.cli.errors import USAGE, CliError
from streamsynth.local.process import sigterm_exits

BENCHMARKS = (
    "stage",
    "client-throughput",
    "llm",
    "engine",
    "llm-bound",
    "vs-curator",
    "memory",
    "scale",
    "fleet",
    "eos",
    "routing",
)


def find_benchmarks_root() -> Path:
    """The directory that contains ``benchmarks/`` (cwd, else the checkout of the package)."""
    import streamsynth

    candidates = [Path.cwd(), Path(streamsynth.__file__).resolve().parents[1]]
    for root in candidates:
        if (root / "benchmarks" / "__init__.py").is_file():
            return root
    raise CliError(
        "benchmarks/ not found: run 'streamsynth bench' from the repository root "
        "(the benchmarks are not part of the installed package)",
        USAGE,
    )


def available(root: Path) -> list[str]:
    files = root.glob("benchmarks/bench_*.py")
    return sorted({p.stem.removeprefix("bench_").replace("_", "-") for p in files})


def bench_command(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Argument(help=f"One of: {', '.join(BENCHMARKS)}; 'list' shows those found."),
    ],
) -> None:
    """Run benchmarks/bench_NAME.py's main(); arguments after NAME are passed to it.

    Example: streamsynth bench client-throughput --requests 5000. Run it from the
    repository root (the benchmarks are not installed with the package). A benchmark's
    own options: streamsynth bench NAME -- --help.
    """
    root = find_benchmarks_root()
    names = available(root)
    if name == "list":
        typer.echo("\n".join(names))
        return
    if name not in names:
        raise CliError(f"unknown benchmark {name!r}; choose one of: {', '.join(names)}", USAGE)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module(f"benchmarks.bench_{name.replace('-', '_')}")
    main = getattr(module, "main", None)
    if not callable(main):
        raise CliError(f"benchmarks/bench_{name}.py has no main()", USAGE)
    code = _call_main(main, list(ctx.args), f"streamsynth bench {name}")
    raise typer.Exit(code)


def _call_main(main: Any, args: list[str], prog: str) -> int:
    """Call ``main(argv)`` when it takes one, else ``main()``; ``sys.argv`` is set for both.

    (argparse names the program after ``sys.argv[0]`` even when given ``argv``.)
    """
    saved = sys.argv
    sys.argv = [prog, *args]
    try:
        with sigterm_exits():  # SIGTERM: SystemExit(143), so the benchmark's cleanups run
            result = main(args) if inspect.signature(main).parameters else main()
    except SystemExit as exc:  # argparse's --help and usage errors, SIGTERM
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else USAGE)
    finally:
        sys.argv = saved
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
