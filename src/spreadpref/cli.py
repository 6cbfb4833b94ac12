"""The ``spreadpref`` command line."""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Optional

import typer

from spreadpref.errors import SpreadprefError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Spread Preference Annotation: align a language model from a small seed of human preference pairs.",
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="YAML config. Default: the bundled CPU profile on the embedded model."),
]
Overrides = Annotated[
    Optional[list[str]],
    typer.Argument(help="Dotted overrides such as train.learning_rate=5e-6 data.max_length=256.", show_default=False),
]


def default_config_path() -> Path:
    return Path(str(resources.files("spreadpref.resources").joinpath("default.yaml")))


def _load(config: Path | None, overrides: list[str] | None, output: Path | None = None):
    from spreadpref.config import load_config

    extra = list(overrides or [])
    if output is not None:
        extra.append(f"output_dir={output}")
    return load_config(config or default_config_path(), extra)


def _run(action) -> None:
    """Turn the errors a user can fix into a message and an exit code, not a traceback."""
    from spreadpref.progress import console

    try:
        action()
    except SpreadprefError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted.[/] Run the same command again to resume from the last checkpoint.")
        raise typer.Exit(130) from None


@app.command()
def train(
    config: ConfigOption = None,
    overrides: Overrides = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output directory (output_dir).")] = None,
    force: Annotated[bool, typer.Option(help="Discard a finished or differently configured train stage.")] = False,
) -> None:
    """Train a policy with (soft-label) DPO on a preference dataset; write a save_pretrained checkpoint."""

    def action() -> None:
        from spreadpref.train import train_policy

        train_policy(_load(config, overrides, output), force=force)

    _run(action)


@app.command()
def inspect(
    config: ConfigOption = None,
    overrides: Overrides = None,
    num: Annotated[int, typer.Option("--num", "-n", help="How many examples to show.")] = 3,
    plain: Annotated[bool, typer.Option(help="Markers instead of colours ([PROMPT]...[/PROMPT][REPLY]...).")] = False,
) -> None:
    """Print tokenised examples with prompt and reply tokens told apart, lengths and truncation."""

    def action() -> None:
        from spreadpref.inspect_data import inspect_dataset

        inspect_dataset(_load(config, overrides), count=num, plain=plain)

    _run(action)


@app.command("config")
def show_config(
    config: ConfigOption = None,
    overrides: Overrides = None,
    reference: Annotated[bool, typer.Option("--reference", help="Print every key with its type and default.")] = False,
) -> None:
    """Print the resolved configuration (defaults, file and overrides) as YAML."""

    def action() -> None:
        if reference:
            from spreadpref.config import reference_markdown

            typer.echo(reference_markdown())
            return
        typer.echo(_load(config, overrides).to_yaml(), nl=False)

    _run(action)


@app.command()
def env() -> None:
    """Versions, device and cache locations, for bug reports."""
    from spreadpref.envinfo import collect

    for key, value in collect().items():
        typer.echo(f"{key + ':':<24} {value}")


def main() -> None:
    # Transformers' advisory warnings drown the progress bars; users can turn them back on.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    app(prog_name="spreadpref")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
