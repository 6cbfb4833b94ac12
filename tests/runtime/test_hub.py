"""hub.push: what is handed to huggingface_hub's upload API (the network call itself cannot run here)."""

import pytest
from helpers import tiny_train_overrides

from spreadpref.config import load_config
from spreadpref.errors import ConfigError
from spreadpref.runtime.layout import MODEL_DIRECTORY


class RecordingApi:
    calls: list = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return type("Commit", (), {"commit_url": f"https://hub/{kwargs['repo_id']}/commit/1"})()


def test_a_finished_train_stage_uploads_its_model_and_card(tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    import huggingface_hub

    from spreadpref.dpo.train import train_policy

    RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    out = tmp_path / "trained"
    overrides = tiny_train_overrides(tiny_model_dir, pairs_file, out) + ["hub.push=true", "hub.model_id=me/tiny-dpo"]
    train_policy(load_config(None, overrides))
    (create, repo, options), (upload, kwargs) = RecordingApi.calls
    assert (create, repo) == ("create_repo", "me/tiny-dpo") and options["private"] and options["exist_ok"]
    assert upload == "upload_folder" and kwargs["repo_id"] == "me/tiny-dpo"
    folder = kwargs["folder_path"]
    assert folder == str(out / MODEL_DIRECTORY)
    assert "# trained: DPO with spreadpref" in (out / MODEL_DIRECTORY / "README.md").read_text()  # the card goes too
    assert "checkpoints/*" in kwargs["ignore_patterns"]


def test_push_needs_a_repo_name():
    with pytest.raises(ConfigError, match="hub.push=true needs hub.model_id=org/name"):
        load_config(None, ["hub.push=true"])


def test_an_upload_failure_names_the_repo_and_keeps_the_model(tmp_path, monkeypatch):
    import huggingface_hub

    from spreadpref.errors import SpreadprefError
    from spreadpref.runtime.hub import push_folder

    class Refusing(RecordingApi):
        def create_repo(self, repo_id, **kwargs):
            raise OSError("401 Unauthorized")  # what a refused token or no network looks like from here

    monkeypatch.setattr(huggingface_hub, "HfApi", Refusing)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "README.md").write_text("card")
    with pytest.raises(SpreadprefError, match="could not upload .* to the hub repo me/x .*saved locally"):
        push_folder(folder, "me/x", private=True, revision=None, message="m")
