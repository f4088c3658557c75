"""``streamsynth config validate|example``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from streamsynth.cli.errors import USAGE, CliError, err_console
from streamsynth.config import EXAMPLE_CONFIG, ConfigError, load_settings

config_app = typer.Typer(
    help="Check a worker configuration file or print an annotated example.",
    no_args_is_help=True,
)


@config_app.command("validate")
def validate_command(
    file: Annotated[Path, typer.Argument(help="The YAML configuration file to check.")],
) -> None:
    """Validate FILE (with STREAMSYNTH_* environment overrides applied).

    Prints OK and a short outline, or every bad field by its path; exits 2 when invalid.
    """
    try:
        settings = load_settings(file)
    except ConfigError as exc:
        # Unlike other errors this one keeps its lines: one per bad field is the point.
        err_console().print(f"[bold red]error:[/] [red]{escape(str(exc))}[/]")
        raise typer.Exit(USAGE) from None
    stages = ", ".join(f"{s.stage_name} -> {s.output_topic}" for s in settings.stages)
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"[bold green]OK[/] {escape(str(file))}")
    out.print(f"  kafka: {settings.kafka.bootstrap_servers}, input {settings.kafka.input_topics}")
    out.print(f"  llm:   {settings.llm.model} at {', '.join(settings.llm.base_urls)}")
    out.print(f"  stages: {escape(stages)}")


@config_app.command("example")
def example_command(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the example here instead of stdout."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUTPUT if it exists.")] = False,
) -> None:
    """Print an annotated example configuration (every section, with comments)."""
    if output is None:
        typer.echo(EXAMPLE_CONFIG, nl=False)
        return
    if output.exists() and not force:
        raise CliError(f"{output} exists; pass --force to overwrite it")
    output.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    err_console().print(f"wrote {escape(str(output))}")
