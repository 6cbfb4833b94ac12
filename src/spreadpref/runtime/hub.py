"""Upload a finished model directory, its model card included, to the Hugging Face Hub (``hub.push``).

Through huggingface_hub's public API: ``create_repo(exist_ok=True)`` then ``upload_folder``. The token is
huggingface_hub's own business (HF_TOKEN, or `hf auth login`): spreadpref never reads, stores or logs it.
Nothing here runs in the test suite's network-less machines except through a stand-in of ``HfApi``.
"""

from __future__ import annotations

from pathlib import Path

from spreadpref.errors import SpreadprefError

# What a released model directory needs: weights, configs, tokenizer, card. Trainer leftovers stay local.
IGNORED = ["checkpoints/*", "*.tmp", ".*", "training_args.bin"]


def push_folder(folder: Path, repo_id: str, *, private: bool, revision: str | None, message: str) -> str:
    """Upload ``folder`` to the model repo ``repo_id`` (created if missing); returns the commit's URL."""
    from huggingface_hub import HfApi  # noqa: PLC0415 - only when pushing
    from huggingface_hub.errors import HfHubHTTPError  # noqa: PLC0415

    if not (Path(folder) / "README.md").is_file():
        raise SpreadprefError(f"{folder} has no model card (README.md); it is not a model spreadpref saved")
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            commit_message=message,
            ignore_patterns=IGNORED,
        )
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise SpreadprefError(
            f"could not upload {folder} to the hub repo {repo_id} ({type(err).__name__}: {str(err)[:300]}). The "
            "model is saved locally; check the token (HF_TOKEN or `hf auth login`), the repo name and the network, "
            "then upload it with `hf upload` or run the same command again."
        ) from None
    return str(getattr(commit, "commit_url", commit))
