"""The ``spreadpref`` command line: parse, load the configuration, call one function, report errors.

Each command imports what it runs inside its own body, so that ``spreadpref --help`` and
``spreadpref config`` answer at once: torch and transformers load only for commands that use them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.markup import escape

from spreadpref.config import TRL_KEYS
from spreadpref.errors import DataError, SpreadprefError
from spreadpref.runtime import preemption
from spreadpref.runtime.layout import CONFIG_FILE, EVAL_DIRECTORY, REPORT_FILE
from spreadpref.runtime.progress import console, error_console, progress_enabled
from spreadpref.runtime.progress import verbose as verbose_requested
from spreadpref.runtime.secrets import redact

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


FIRST_SEED = 1000  # the sandbox's seeds: apart from those docs/results.md chose settings on or reported


def default_config_path() -> Path:
    from spreadpref.config import default_profile_path

    return default_profile_path()


def _load(config: Path | None, overrides: list[str] | None, output: Path | None = None):
    from spreadpref.config import load_config

    extra = list(overrides or [])
    if output is not None:
        extra.append(f"output_dir={output}")
    return load_config(config or default_config_path(), extra)


MAX_MESSAGE_CHARS = 2000  # an error message never prints unbounded input (a 2 MB line, an expanded YAML alias)
EXIT_USER_ERROR, EXIT_IO_ERROR, EXIT_UNEXPECTED, EXIT_INTERRUPTED = 2, 3, 1, 130


_debug_flag = False  # --debug of the current invocation


def debug_requested() -> bool:
    """``--debug`` or SPREADPREF_DEBUG=1: let the traceback through."""
    return _debug_flag or os.environ.get("SPREADPREF_DEBUG", "").strip().lower() in {"1", "true", "yes"}


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]} [... {len(text) - limit} characters left out ...] {text[-limit // 2 :]}"


def _print_version(value: bool) -> None:
    if value:
        import platform  # noqa: PLC0415

        import torch  # noqa: PLC0415
        import transformers  # noqa: PLC0415

        from spreadpref import __version__  # noqa: PLC0415

        print(  # stdout, for scripts: `spreadpref --version | cut -d' ' -f2`
            f"spreadpref {__version__} (torch {torch.__version__}, transformers {transformers.__version__}, "
            f"Python {platform.python_version()})"
        )
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback of an error (or set SPREADPREF_DEBUG=1).")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            help="Also print the Trainer's per-step logs and the libraries' own progress bars (or set "
            "SPREADPREF_VERBOSE=1). Without it the per-step logs go to each training stage's train_log.jsonl.",
        ),
    ] = False,
) -> None:
    global _debug_flag  # noqa: PLW0603 - one flag per invocation, read by the boundary
    _debug_flag = debug
    if verbose:
        os.environ["SPREADPREF_VERBOSE"] = "1"
    _quiet_library_bars()


def _quiet_library_bars() -> None:
    """datasets' own bars only with --verbose: each stage draws its own (transformers': models/loading.py)."""
    if not (verbose_requested() and progress_enabled()):
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets is imported


def _run(action) -> None:
    """The one error boundary: every error ends in a message and a documented exit code, not a traceback.

    Exit codes: 2 a problem in the input or settings (the message says what to fix), 3 a file that could
    not be read or written, 130 interrupted, 1 anything unexpected (a bug: the message says how to report it).
    """
    preemption.handle_sigterm()  # a scheduler's SIGTERM ends the command as Ctrl-C does, checkpoint first
    if debug_requested():
        action()
        return
    try:
        action()
    except SpreadprefError as err:
        _fail(escape(bounded(redact(str(err)))), EXIT_USER_ERROR)
    except KeyboardInterrupt as err:
        cause = "Stopped by SIGTERM." if isinstance(err, preemption.Terminated) else "Interrupted."
        console.print(
            f"[yellow]{cause}[/] Finished stages are saved: run the same command again to resume. The stage that "
            "was running starts again from its last Trainer checkpoint, or from its beginning when it saved none "
            "(train.save_strategy=no, as in the CPU profiles)."
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # The reader of our output went away (`spreadpref ... | head`): nothing more can be shown.
        with contextlib.suppress(OSError, ValueError):  # no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _fail(
            "standard output was closed (the program reading it, e.g. `| head`, exited); the command stopped "
            "there. Finished work is saved: run it again without the pipe, or redirect to a file.",
            EXIT_IO_ERROR,
        )
    except OSError as err:
        # Disk full, read-only or vanished directory: every write is atomic, so nothing finished is lost.
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        _fail(
            f"could not read or write a file{escape(where)}: {escape(bounded(redact(str(err.strerror or err))))}. "
            "Files already written are intact; fix the cause and run the same command again to resume.",
            EXIT_IO_ERROR,
        )
    except MemoryError:
        _fail(
            "out of memory. Finished work is saved; lower the batch sizes (train.per_device_batch_size, "
            "generation.batch_size, judge.batch_size) and run the same command again.",
            EXIT_IO_ERROR,
        )
    except Exception as err:  # noqa: BLE001 - the boundary: anything else is a bug, reported without a traceback
        if _is_disk_write_failure(err):  # torch's and safetensors' writers say "disk full" in their own words
            _fail(
                f"a file could not be written ({escape(bounded(redact(str(err)), 300))}): the disk is probably full. "
                "Files already written are intact; free space and run the same command again to resume.",
                EXIT_IO_ERROR,
            )
        _fail(
            f"unexpected {type(err).__name__}: {escape(bounded(redact(str(err)), 500))}{escape(_innermost_frame(err))}. "
            "Finished work is saved. This is a bug in spreadpref or a case it does not check yet: run the same "
            "command with --debug (or SPREADPREF_DEBUG=1) for the traceback and report it.",
            EXIT_UNEXPECTED,
        )


def _fail(message: str, code: int) -> NoReturn:
    """One error line on stderr and the exit code. soft_wrap: no hard line breaks inside paths, so the message
    can be copied as it is."""
    error_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


DISK_WRITE_FAILURES = ("no space left", "storagefull", "file write failed", "errno 28", "disk quota")


def _is_disk_write_failure(err: BaseException) -> bool:
    """torch.save's RuntimeError ("PytorchStreamWriter failed writing file ...: file write failed") and
    safetensors' "IoError(... StorageFull ...)": an environment fault, not a bug."""
    text = str(err).lower()
    return any(marker in text for marker in DISK_WRITE_FAILURES)


def _innermost_frame(err: BaseException) -> str:
    """' (at module.py:123)': where the error was raised, enough for a report without a traceback."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return ""
    return f" (at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno})"


@app.command()
def train(
    config: ConfigOption = None,
    overrides: Overrides = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output directory (output_dir).")] = None,
    force: Annotated[bool, typer.Option(help="Discard a finished or differently configured train stage.")] = False,
) -> None:
    """Train a policy with (soft-label) DPO on a preference dataset; write a save_pretrained checkpoint."""

    def action() -> None:
        from spreadpref.dpo.train import train_policy
        from spreadpref.eval.report import report_or_warn

        extra = list(overrides or [])
        if config is None and output is None and not any(o.startswith("output_dir=") for o in extra):
            extra.append("output_dir=runs/seed")  # the default profile's output_dir is for `run`
        result = train_policy(_load(config, extra, output), force=force)
        report_or_warn(result.output_dir)

    _run(action)


@app.command()
def run(
    config: ConfigOption = None,
    overrides: Overrides = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Run directory (output_dir).")] = None,
    force: Annotated[bool, typer.Option(help="Discard stages made with a different configuration (or all).")] = False,
) -> None:
    """Run SPA: seed DPO, then rounds of generate, judge, self-refined DPO. Resumes where it stopped."""

    def action() -> None:
        from spreadpref.spa.loop import run as run_loop

        run_loop(_load(config, overrides, output), force=force)

    _run(action)


@app.command()
def generate(
    config: ConfigOption = None,
    overrides: Overrides = None,
    model: Annotated[Optional[str], typer.Option(help="Policy to sample from (default: model.name_or_path).")] = None,
    prompts: Annotated[Optional[str], typer.Option(help="Prompt source (default: data.prompts).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Generations JSONL to write.")] = Path("generations.jsonl"),
    limit: Annotated[Optional[int], typer.Option(min=1, help="Only the first N prompts.")] = None,
) -> None:
    """Sample generation.num_samples replies per prompt (token ids, text, finish reason) into a JSONL file."""

    def action() -> None:
        from spreadpref.data.loading import load_prompts
        from spreadpref.models.loading import load_tokenizer
        from spreadpref.spa.context import StageContext
        from spreadpref.spa.generate import generate_stage

        cfg = _load(config, overrides)
        records, report = load_prompts(
            prompts or cfg.data.prompts,
            cfg.data.columns,
            limit=limit,
            skip_invalid=cfg.data.skip_invalid,
            system_prompt=cfg.data.system_prompt,
        )
        console.print(report.summary())
        ctx = StageContext(cfg, load_tokenizer(cfg.model), out.parent)
        result = generate_stage(ctx, records, model or cfg.model.name_or_path, out_file=out, write_prompts=False)
        console.print(f"{len(result.samples)} samples written to {out}")

    _run(action)


@app.command()
def judge(
    generations: Annotated[Path, typer.Argument(help="Generations JSONL from `spreadpref generate`.")],
    config: ConfigOption = None,
    overrides: Overrides = None,
    policy: Annotated[
        Optional[str], typer.Option(help="The model that generated (default: model.name_or_path).")
    ] = None,
    reference: Annotated[
        Optional[str], typer.Option(help="Judge reference; 'none' for none (default: model.name_or_path).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for judged.jsonl and pairs.jsonl.")] = Path(
        "judged"
    ),
    prompts: Annotated[
        Optional[str],
        typer.Option(
            help="Prompt source whose extra columns (the verifier's constraints) the judges read, by prompt id "
            "(default: data.prompts when judge.kind or judge.gold is verifier)."
        ),
    ] = None,
) -> None:
    """Score samples (implicit reward, or judge.kind) and pair them: chosen = best, rejected = worst per prompt.

    With judge.gold set, a gold judge also labels the pairs and the self-labels' accuracy is printed.
    """

    def action() -> None:
        from spreadpref.data.artifacts import Pair, Sample
        from spreadpref.data.loading import load_prompts
        from spreadpref.data.tokenize import out_of_vocabulary
        from spreadpref.models.loading import load_tokenizer
        from spreadpref.spa.context import StageContext
        from spreadpref.spa.judge import check_judge_model, judge_stage

        cfg = _load(config, overrides)
        metadata = {}
        source = prompts or (cfg.data.prompts if "verifier" in (cfg.judge.kind, cfg.judge.gold) else None)
        if source:
            records, _ = load_prompts(source, cfg.data.columns, skip_invalid=cfg.data.skip_invalid)
            metadata = {record.id: record.metadata for record in records}
        if not generations.is_file():
            raise SpreadprefError(f"generations file not found: {generations}")
        samples = Sample.read(generations)
        ref_name = reference or cfg.model.name_or_path
        tokenizer = load_tokenizer(cfg.model)
        for number, sample in enumerate(samples, start=1):  # ids from another tokenizer would index past the model
            for column in ("prompt_ids", "reply_ids"):
                if (bad := out_of_vocabulary(getattr(sample, column), tokenizer)) is not None:
                    raise DataError(
                        str(generations),
                        f"row {number}",
                        column,
                        f"holds token id {bad}, outside the tokenizer's vocabulary of {len(tokenizer)}: the "
                        f"generations were made with another model's tokenizer than {cfg.model.name_or_path}",
                    )
        # As `spreadpref run` does: every model that scores the token ids must share the tokenizer they came from.
        for option, name in (("--policy", policy), ("--reference", reference)):
            if name and name.lower() != "none":
                check_judge_model(option, name, cfg, tokenizer)
        out.mkdir(parents=True, exist_ok=True)
        ctx = StageContext(cfg, tokenizer, out)
        result = judge_stage(
            ctx,
            samples,
            policy or cfg.model.name_or_path,
            None if ref_name.lower() == "none" else ref_name,
            metadata=metadata,
        )
        stats = result.stats
        console.print(
            f"{stats.pairs} pairs from {stats.prompts} prompts ({stats.identical_dropped} identical, "
            f"{stats.ties_dropped} tied dropped) written to {out / Pair.FILE}"
        )
        if result.metrics.get("gold"):
            print_gold_figures(cfg.judge.gold, result.metrics["gold"])

    _run(action)


def print_gold_figures(gold_kind: str, gold: dict) -> None:
    from rich.table import Table

    console.print(
        f"Self-label accuracy against the {gold_kind} judge: {gold['rate']:.3f} "
        f"(95% CI {gold['ci_low']:.3f}–{gold['ci_high']:.3f}) on {gold['n']} pairs; {gold['gold_ties']} gold ties left out."
    )
    table = Table(title="accuracy by judge-margin decile")
    for column in ("margin", "pairs", "accuracy (95% CI)"):
        table.add_column(column, justify="right")
    for row in gold["by_margin_decile"]:
        table.add_row(
            f"{row['margin_low']:.3g} – {row['margin_high']:.3g}",
            str(row["n"]),
            f"{row['rate']:.2f} ({row['ci_low']:.2f}–{row['ci_high']:.2f})",
        )
    console.print(table)


@app.command("eval")
def evaluate(
    targets: Annotated[
        list[str],
        typer.Argument(
            help="Run directories (every model of the run: sft, seed, round-N) and/or model directories or hub ids."
        ),
    ],
    config: ConfigOption = None,
    overrides: Annotated[
        Optional[list[str]],
        typer.Option("--set", "-s", help="Dotted override, e.g. eval.judge.kind=reward_model; repeatable."),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Output directory (default: <first run directory>/eval, or eval/)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Discard earlier answers and verdicts in the output directory.")] = False,
) -> None:
    """Answer held-out prompts with each model; win rates against the baseline (with CI and length control)."""

    def action() -> None:
        from spreadpref.eval.evaluate import evaluate as run_eval

        first = Path(targets[0])
        run_config = first / CONFIG_FILE
        cfg = _load(config or (run_config if run_config.is_file() else None), overrides)
        destination = out or (first / EVAL_DIRECTORY if run_config.is_file() else Path(EVAL_DIRECTORY))
        run_eval(cfg, targets, destination, force=force)
        console.print(
            f"Results: {destination / 'eval.md'}; AlpacaEval outputs in {destination / 'alpaca_eval'}, "
            f"MT-Bench answers in {destination / 'mt_bench'}"
        )
        if run_config.is_file() and destination.resolve() == (first / EVAL_DIRECTORY).resolve():
            from spreadpref.eval.report import write_report

            console.print(f"Report: {write_report(first)} (with this evaluation)")
        elif run_config.is_file():
            console.print(
                f"The run's report ({first / REPORT_FILE}) shows the evaluation in {first / EVAL_DIRECTORY} only; "
                f"this one (-o {destination}) is in its own eval.md."
            )

    _run(action)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A `spreadpref run` or `spreadpref train` directory.")],
) -> None:
    """(Re)write report.md and its plots for a run or train directory (also done at the end of every run)."""

    def action() -> None:
        from spreadpref.eval.report import write_any_report

        console.print(f"Report: {write_any_report(run_dir)}")

    _run(action)


@app.command()
def sandbox(
    config: ConfigOption = None,
    overrides: Overrides = None,
    seeds: Annotated[
        int, typer.Option(min=1, help="How many seeds (worlds) to run; the run says what difference they can detect.")
    ] = 5,
    first_seed: Annotated[int, typer.Option(min=0, help="The first seed; the others follow it.")] = FIRST_SEED,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the worlds and the tables go.")] = Path(
        "runs/sandbox"
    ),
    reduced: Annotated[
        bool,
        typer.Option(
            help="The regression test's smaller world: its effects are about half the full world's and small "
            "per-seed differences can change sign there; decide with the full world."
        ),
    ] = False,
) -> None:
    """Try a config's SPA settings in a synthetic world with a gold reward you can see, seed by seed, against
    seed-only DPO, the paper's SPA and iterative DPO on gold labels (minutes on a laptop CPU)."""

    def action() -> None:
        from spreadpref.sandbox import differences_table, power_note, run_sandbox
        from spreadpref.sandbox.settings import REDUCED_WORLD, WorldSettings

        settings = REDUCED_WORLD if reduced else WorldSettings()
        seed_list = list(range(first_seed, first_seed + seeds))
        document = run_sandbox(_load(config, overrides), seed_list, output, settings)
        console.print(differences_table(document))
        if note := power_note(document):
            console.print(note)
        console.print(f"Per variant and round: {output / 'sandbox.md'}; per seed: {output}/seed-N.json")

    _run(action)


@app.command()
def inspect(
    config: ConfigOption = None,
    overrides: Overrides = None,
    num: Annotated[int, typer.Option("--num", "-n", help="How many examples to show.")] = 3,
    plain: Annotated[
        bool, typer.Option(help="Markers instead of colours (\\[PROMPT]...\\[/PROMPT]\\[REPLY]...).")
    ] = False,
) -> None:
    """Print tokenised examples with prompt and reply tokens told apart, lengths and truncation."""

    def action() -> None:
        from spreadpref.data.inspect import inspect_dataset
        from spreadpref.models.loading import load_tokenizer

        cfg = _load(config, overrides)
        inspect_dataset(cfg, load_tokenizer(cfg.model), count=num, plain=plain)

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


# Flags of TRL's and transformers' scripts that users type by habit, and spreadpref's key for each
# (config.TRL_KEYS, which also answers the same names as flat YAML keys).
HABIT_FLAGS = {
    f"--{name}": "model.dtype=bfloat16 train.mixed_precision=bf16"
    if name == "bf16"
    else f"{key}=true"
    if name in ("gradient_checkpointing", "use_peft")
    else f"{key}=..."
    for name, key in TRL_KEYS.items()
}


def habit_hint(argv: list[str]) -> str | None:
    """A hint for TRL-style flags, which spreadpref takes as dotted overrides instead."""
    found = [arg.split("=", 1)[0] for arg in argv if arg.split("=", 1)[0] in HABIT_FLAGS]
    if not found:
        return None
    pairs = "; ".join(f"{flag} -> {HABIT_FLAGS[flag]}" for flag in dict.fromkeys(found))
    return (
        f"spreadpref takes settings as dotted overrides, not TRL flags: {pairs}. "
        "For example: spreadpref train model.name_or_path=my/model train.learning_rate=5e-7 -o runs/x "
        "(`spreadpref config --reference` lists every key)."
    )


def main() -> None:
    if hint := habit_hint(sys.argv[1:]):
        error_console.print(f"[bold red]error:[/] {escape(hint)}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USER_ERROR)
    # Transformers' advisory warnings drown the progress bars; users can turn them back on.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    app(prog_name="spreadpref")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
