"""``streamsynth config validate|example``."""

from __future__ import annotations

import re
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from streamsynth.cli.errors import USAGE, CliError, err_console
from streamsynth.config import EXAMPLE_CONFIG, ConfigError, StageSettings, load_settings

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
    stages = ", ".join(_outline(s) for s in settings.stages)
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"[bold green]OK[/] {escape(str(file))}")
    out.print(f"  kafka: {settings.kafka.bootstrap_servers}, input {settings.kafka.input_topics}")
    out.print(f"  llm:   {settings.llm.model} at {', '.join(settings.llm.base_urls)}")
    out.print(f"  stages: {escape(stages)}")


def _outline(stage: StageSettings) -> str:
    """``name [from UPSTREAM] [when field op value ...] -> topic``."""
    parts = [stage.stage_name]
    if stage.input_from is not None:
        upstream = stage.input_from
        parts.append(f"from {upstream if isinstance(upstream, str) else upstream[0]}")
    for name, spec in (stage.when or {}).items():
        parts.extend(f"when {name} {op} {value}" for op, value in spec.items())
    return f"{' '.join(parts)} -> {stage.output_topic}"


class Recipe(StrEnum):
    """The complete worker configs shipped as package data (streamsynth/data/recipes)."""

    nemotron_cc = "nemotron-cc"
    chain = "chain"


#: The routing lines of the nemotron-cc recipe that --quality-field/--threshold rewrite.
_HIGH = "when: {bucketed_results: {gt: 11}}"
_LOW = "when: {bucketed_results: {lte: 11}}"
_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def recipe_text(recipe: Recipe, field: str | None = None, threshold: float | None = None) -> str:
    """The recipe's YAML; for nemotron-cc, with the quality field and threshold substituted."""
    text = resources.files("streamsynth").joinpath(f"data/recipes/{recipe.value}.yaml")
    out = text.read_text("utf-8")
    if field is None and threshold is None:
        return out
    if recipe is not Recipe.nemotron_cc:
        raise CliError("--quality-field and --threshold apply to --recipe nemotron-cc only")
    name = field or "bucketed_results"
    if not _FIELD_RE.fullmatch(name):
        raise CliError(f"--quality-field {name!r}: use letters, digits, '_', '.' or '-'")
    limit = 11 if threshold is None else threshold
    bound = int(limit) if float(limit).is_integer() else limit
    out = out.replace(_HIGH, f"when: {{{name}: {{gt: {bound}}}}}")
    return out.replace(_LOW, f"when: {{{name}: {{lte: {bound}}}}}")


@config_app.command("example")
def example_command(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the example here instead of stdout."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUTPUT if it exists.")] = False,
    recipe: Annotated[
        Recipe | None,
        typer.Option(
            "--recipe",
            help="A complete config instead of the annotated example: nemotron-cc (the "
            "tutorial's quality split over the five tasks) or chain (stages reading stages).",
        ),
    ] = None,
    quality_field: Annotated[
        str | None,
        typer.Option("--quality-field", help="nemotron-cc: the field to route on."),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="nemotron-cc: high quality is field > THRESHOLD."),
    ] = None,
) -> None:
    """Print an annotated example configuration (every section, with comments), or a recipe."""
    if recipe is None:
        if quality_field is not None or threshold is not None:
            raise CliError("--quality-field and --threshold need --recipe nemotron-cc")
        text = EXAMPLE_CONFIG
    else:
        text = recipe_text(recipe, quality_field, threshold)
    if output is None:
        typer.echo(text, nl=False)
        return
    if output.exists() and not force:
        raise CliError(f"{output} exists; pass --force to overwrite it")
    output.write_text(text, encoding="utf-8")
    err_console().print(f"wrote {escape(str(output))}")
