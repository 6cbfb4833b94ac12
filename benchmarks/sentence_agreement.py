"""How often the verifier's data-free sentence splitter counts as NLTK's published Punkt model does.

    pip install --no-deps llama-index-core==0.14.25    # only for this comparison: it ships punkt_tab
    python benchmarks/sentence_agreement.py            # replies under benchmarks/work/spread*

The verifier (``spreadpref.judges.sentences``) splits sentences with NLTK's Punkt algorithm, a short
hand-written abbreviation list and no learned data. IFEval's own checkers use NLTK's published English
model, whose data no package is made to ship. This compares the two on real replies of the embedded model:

* every distinct reply: the same sentence count or not;
* every reply to a prompt with a sentence-count constraint: the same verdict or not, and the change in
  the mean gold score of each evaluated model file (the figure docs/results.md reports).

Reply files: ``generations.jsonl`` (``prompt_id``, ``text``) and evaluation answers (``question_id``,
``choices[0].turns[0]``). Writes ``<out>/sentence_agreement.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from spreadpref.data.sources import iter_rows
from spreadpref.judges import sentences, verifier

NUMBER_SENTENCES = "length_constraints:number_sentences"
BUILTIN_PROMPT_SETS = ("builtin:ifeval_prompts", "builtin:ifeval_eval", "builtin:ifeval_seed_prompts")


def published_punkt() -> Any:
    """NLTK's published English Punkt model, from NLTK_DATA or the llama-index-core wheel."""
    import nltk  # noqa: PLC0415

    spec = importlib.util.find_spec("llama_index.core")
    for location in (spec.submodule_search_locations or []) if spec else []:
        nltk.data.path.insert(0, str(Path(location) / "_static" / "nltk_cache"))
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        sys.exit("NLTK's punkt_tab is not installed: pip install --no-deps llama-index-core==0.14.25")
    return nltk.tokenize.PunktTokenizer("english")


def read_replies(path: Path) -> list[tuple[str, str]]:
    """(prompt id, reply) of a generations or evaluation-answers file."""
    replies = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "text" in row:
            replies.append((row["prompt_id"], row["text"]))
        else:
            replies.append((row["question_id"], row["choices"][0]["turns"][0]))
    return replies


def sentence_limits(constraints: list[verifier.Constraint]) -> list[tuple[str, int]]:
    """(relation, number) of each sentence-count constraint."""
    return [
        (c.kwargs["relation"], int(c.kwargs["num_sentences"]))
        for c in constraints
        if c.instruction_id == NUMBER_SENTENCES
    ]


def satisfied(count: int, relation: str, number: int) -> bool:
    """IFEval's rule: 'less than' is count < number, 'at least' is count >= number."""
    return count < number if relation == "less than" else count >= number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", nargs="*", type=Path, help="reply files (default: benchmarks/work/spread*)")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args(argv)
    work = Path("benchmarks/work")
    files = args.replies or sorted(
        [*work.glob("spread*/**/generations.jsonl"), *work.glob("spread*/**/answers/*.jsonl")]
    )
    constraints = {
        row["id"]: verifier.constraints_from_row(row) for name in BUILTIN_PROMPT_SETS for _, row in iter_rows(name)
    }
    published, ours = published_punkt(), sentences.english_sentence_tokenizer()
    counts: dict[str, tuple[int, int]] = {}
    verdicts = {"checked": 0, "same": 0}
    score_shifts = []
    for path in files:
        replies = read_replies(path)
        shift = 0.0
        for prompt_id, reply in replies:
            if reply not in counts:
                counts[reply] = (len(published.tokenize(reply)), len(ours.tokenize(reply)))
            theirs, mine = counts[reply]
            limits = sentence_limits(constraints.get(prompt_id, []))
            for relation, number in limits:
                verdicts["checked"] += 1
                verdicts["same"] += satisfied(theirs, relation, number) == satisfied(mine, relation, number)
                shift += (satisfied(mine, relation, number) - satisfied(theirs, relation, number)) / len(
                    constraints[prompt_id]
                )
        score_shifts.append({"file": str(path), "replies": len(replies), "mean_score_shift": shift / len(replies)})
    differing = [(theirs, mine, text) for text, (theirs, mine) in counts.items() if theirs != mine]
    results = {
        "replies": len(counts),
        "same_count": len(counts) - len(differing),
        "same_count_fraction": 1 - len(differing) / len(counts),
        "sentence_verdicts": verdicts,
        "largest_score_shift": max((abs(s["mean_score_shift"]) for s in score_shifts), default=0.0),
        "files": score_shifts,
        "differing_examples": [{"published": t, "spreadpref": m, "text": x[:200]} for t, m, x in differing[:12]],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sentence_agreement.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (args.out / "sentence_agreement.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))
    return 0


def markdown(results: dict[str, Any]) -> str:
    verdicts = results["sentence_verdicts"]
    lines = [
        "# The verifier's sentence splitter against NLTK's published Punkt model",
        "",
        "Replies of the embedded model (the generations and evaluation answers of the runs of docs/results.md "
        "§2), counted by `spreadpref.judges.sentences` and by NLTK's `punkt_tab` English model. "
        "Command: `python benchmarks/sentence_agreement.py`.",
        "",
        f"- Distinct replies: {results['replies']}; the same sentence count: {results['same_count']} "
        f"({results['same_count_fraction']:.1%}).",
        f"- Sentence-count constraints checked: {verdicts['checked']}; the same verdict: {verdicts['same']}.",
        f"- Largest change of a model file's mean gold score: {results['largest_score_shift']:.4f} "
        f"(over {len(results['files'])} files).",
        "",
        "Replies counted differently (published / spreadpref):",
        "",
    ]
    lines += [f"- {e['published']} / {e['spreadpref']}: `{e['text']!r}`" for e in results["differing_examples"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
