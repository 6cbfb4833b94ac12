"""``spreadpref inspect``: show tokenised examples so chat-template mistakes are caught before training.

Prompt tokens and reply tokens are told apart by colour (and by markers with ``plain=True``), special
tokens are shown by name, and lengths and truncation are listed per example.
"""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.text import Text
from transformers import PreTrainedTokenizerBase

from spreadpref.config import Config
from spreadpref.data.loading import load_training_preferences
from spreadpref.data.tokenize import TokenizedPair, tokenize_pairs

PROMPT_STYLE = "cyan"
CHOSEN_STYLE = "green"
REJECTED_STYLE = "red"
SPECIAL_STYLE = "bold magenta"


def render_tokens(tokenizer: PreTrainedTokenizerBase, ids: list[int], style: str, plain: bool) -> Text:
    special = set(tokenizer.all_special_ids)
    text = Text()
    for token_id in ids:
        piece = tokenizer.decode([token_id])
        if token_id in special:
            text.append(f"⟨{tokenizer.convert_ids_to_tokens(token_id)}⟩", style=SPECIAL_STYLE if not plain else None)
        else:
            text.append(piece, style=None if plain else style)
    return text


def describe_pair(tokenizer: PreTrainedTokenizerBase, pair: TokenizedPair, plain: bool = False) -> Panel:
    body = Text()
    for name, ids, style, cut in (
        ("chosen", pair.chosen_ids, CHOSEN_STYLE, pair.chosen_truncated),
        ("rejected", pair.rejected_ids, REJECTED_STYLE, pair.rejected_truncated),
    ):
        body.append(f"── prompt + {name} ──\n", style="bold")
        if plain:
            body.append("[PROMPT]")
        body.append_text(render_tokens(tokenizer, pair.prompt_ids, PROMPT_STYLE, plain))
        body.append("[/PROMPT][REPLY]" if plain else "")
        body.append_text(render_tokens(tokenizer, ids, style, plain))
        if plain:
            body.append("[/REPLY]")
        ends_with_eos = bool(ids) and ids[-1] == tokenizer.eos_token_id
        body.append(
            f"\n   prompt {len(pair.prompt_ids)} tokens, reply {len(ids)} tokens, "
            f"ends with EOS: {'yes' if ends_with_eos else 'no'}, reply truncated: {'yes' if cut else 'no'}\n",
            style="dim" if not plain else None,
        )
    title = f"{pair.id}  label={pair.label:g}  weight={pair.weight:g}  prompt truncated: {'yes' if pair.prompt_truncated else 'no'}"
    return Panel(body, title=title, title_align="left")


def inspect_dataset(
    config: Config,
    tokenizer: PreTrainedTokenizerBase,
    count: int = 3,
    plain: bool = False,
    console: Console | None = None,
) -> None:
    """Print ``count`` tokenised pairs of ``data.train``, then lengths and truncation."""
    console = console or Console()
    data = config.data
    records, report = load_training_preferences(data)
    pairs, truncation = tokenize_pairs(tokenizer, records, data.max_length, data.max_prompt_length)
    if not plain:
        console.print(
            f"Legend: [{PROMPT_STYLE}]prompt[/] [{CHOSEN_STYLE}]chosen reply[/] "
            f"[{REJECTED_STYLE}]rejected reply[/] [{SPECIAL_STYLE}]⟨special token⟩[/]"
        )
    for pair in pairs[:count]:
        console.print(describe_pair(tokenizer, pair, plain))
    lengths = sorted(p.length for p in pairs)
    console.print(report.summary())
    console.print(truncation.summary())
    console.print(
        f"sequence length (prompt + longer reply): min {lengths[0]}, median {lengths[len(lengths) // 2]}, "
        f"max {lengths[-1]}; limits max_length={data.max_length}, max_prompt_length={data.max_prompt_length}"
    )
