"""--upload-repo on `gift merge` and `gift export-adapter`: the written folder, model card included, goes to the
Hub through huggingface_hub's HfApi (create_repo, upload_folder). No network: HfApi is replaced by a fake."""

import huggingface_hub
import pytest
from click.testing import CliRunner
from test_merge import make_adapter

from gift_mlx.cli import main


class FakeHub:
    calls = []
    fail = None

    def create_repo(self, repo_id, repo_type="model", exist_ok=False):
        self.calls.append(("create_repo", repo_id, repo_type, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, repo_type="model", commit_message=""):
        if self.fail:
            raise self.fail
        from pathlib import Path

        self.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir()),
                           (Path(folder_path) / "README.md").read_text()))


@pytest.fixture
def hub(monkeypatch):
    FakeHub.calls, FakeHub.fail = [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    return FakeHub


@pytest.mark.parametrize("command", [["merge"], ["merge", "--format", "gguf"], ["export-adapter"]])
def test_upload_sends_the_written_folder_with_its_card(command, hub, llama_pair, tmp_path):
    base, instruct = llama_pair
    lora = make_adapter(base, tmp_path / "a", instruct)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, [*command, "--adapter-path", str(lora), "--out", str(out),
                                  "--upload-repo", "me/gift-toy"])
    assert r.exit_code == 0, r.output
    assert hub.calls[0] == ("create_repo", "me/gift-toy", "model", True)
    _, repo, files, card = hub.calls[1]
    assert repo == "me/gift-toy" and files == sorted(p.name for p in out.iterdir())
    assert "README.md" in files and "gift_export.json" in files and card.startswith("---\nbase_model:")
    assert "uploaded" in r.output and "https://huggingface.co/me/gift-toy" in r.output


def test_failed_upload_is_one_error_line_and_keeps_the_output(hub, llama_pair, tmp_path):
    base, instruct = llama_pair
    lora = make_adapter(base, tmp_path / "a", instruct)
    hub.fail = OSError("401 Client Error: Unauthorized\nInvalid credentials")
    r = CliRunner().invoke(main, ["export-adapter", "--adapter-path", str(lora), "--out", str(tmp_path / "p"),
                                  "--upload-repo", "me/x"])
    assert r.exit_code == 2
    assert "error: --upload-repo me/x: upload failed (401 Client Error: Unauthorized Invalid credentials)" in r.output
    assert (tmp_path / "p" / "adapter_model.safetensors").exists()
