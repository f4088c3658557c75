"""The ``streamsynth`` command line: one typer app, one module per command group.

Error reporting lives in :class:`_Group`'s ``main`` so that it applies alike to the
installed console script and to typer's ``CliRunner`` in tests.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from streamsynth.cli import bench, broker, config_cmd, demo, io, run, sim
from streamsynth.cli.errors import (
    ABORTS,
    INTERRUPTED,
    ClickException,
    NoArgsIsHelpError,
    describe,
    fail,
    usage_message,
)


class _Group(TyperGroup):
    """Runs commands without click's standalone handling and reports errors in one line."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except NoArgsIsHelpError as exc:
            typer.echo(exc.format_message(), err=True)  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        except ClickException as exc:
            fail(usage_message(exc), exc.exit_code)  # type: ignore[attr-defined]
        except ABORTS:
            fail("aborted", INTERRUPTED)
        except KeyboardInterrupt:
            fail("interrupted", INTERRUPTED)
        except Exception as exc:
            known = describe(exc)
            if known is None:
                raise
            fail(*known)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name="streamsynth",
    cls=_Group,
    help="Kafka workers that turn a stream of documents into synthetic pretraining data.",
    no_args_is_help=True,
    add_completion=False,
    # Plain click help: at 80 columns rich's tables cut option names short.
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("run")(run.run_command)
app.command("produce")(io.produce_command)
app.command("consume")(io.consume_command)
app.command("broker")(broker.broker_command)
app.command("llm-sim")(sim.llm_sim_command)
app.add_typer(config_cmd.config_app, name="config")
app.command("demo")(demo.demo_command)
app.command(
    "bench",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)(bench.bench_command)


if __name__ == "__main__":
    app()
