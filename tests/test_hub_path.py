"""The seed's own path: `gpt2` and `HuggingFaceH4/ultrachat_200k` by their Hub names, with the default
settings, read from a local Hugging Face cache as after an earlier download (HF_HUB_OFFLINE=1)."""

import json
import shutil

from conftest import run_script

from sft.train.metadata import METADATA_FILE

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_model_cache(home, repo_id: str, folder) -> None:
    """A model in the Hub cache's layout: models--ORG--NAME/snapshots/COMMIT/..., refs/main naming the commit."""
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def hub_dataset_cache(home, repo_id: str, splits: dict, tmp_path) -> None:
    """A dataset as `datasets` caches it after loading it from the Hub: NAMESPACE___NAME/default/0.0.0/HASH
    with one NAME-SPLIT.arrow file per split, written by datasets' own Parquet builder."""
    import datasets
    from datasets.packaged_modules.parquet.parquet import Parquet

    name = repo_id.split("/")[-1]
    for split, rows in splits.items():
        datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / f"{split}.parquet"))
    builder = Parquet(cache_dir=str(tmp_path / "build"), dataset_name=name,
                      data_files={split: str(tmp_path / f"{split}.parquet") for split in splits})
    builder.download_and_prepare()
    target = home / "datasets" / repo_id.replace("/", "___") / "default" / "0.0.0" / COMMIT[:16]
    target.parent.mkdir(parents=True)
    shutil.move(builder.cache_dir, target)


def ultrachat_rows(chats_file, split: str) -> list[dict]:
    """UltraChat's columns (prompt, prompt_id, messages), filled with the fixture's chats, marked by split."""
    rows = []
    for number, line in enumerate(chats_file.read_text().splitlines()):
        messages = json.loads(line)["messages"]
        messages[0] = {**messages[0], "content": f"[{split}] {messages[0]['content']}"}
        rows.append({"prompt": messages[0]["content"], "prompt_id": f"{split}-{number}", "messages": messages})
    return rows


def test_quick_test_takes_the_seeds_path_from_the_hub_cache(tmp_path, tiny_gpt2_dir, chats_jsonl):
    home = tmp_path / "hf-home"
    hub_model_cache(home, "gpt2", tiny_gpt2_dir)
    hub_dataset_cache(home, "HuggingFaceH4/ultrachat_200k",
                      {split: ultrachat_rows(chats_jsonl, split) for split in ("train_sft", "test_sft")}, tmp_path)

    out_dir = tmp_path / "chatbot-test"
    result = run_script("quick_test.py", "--output-dir", str(out_dir), "--num-train-samples", "24", "--max-steps", "2",
                        cwd=tmp_path, env={"HF_HOME": str(home)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "OFFLINE" not in result.stdout  # no kit banner: the seed's model and data were found
    assert "Data: HuggingFaceH4/ultrachat_200k [messages, from hub]" in result.stdout
    assert "[train_sft]" in result.stdout and "[test_sft]" not in result.stdout  # the first example, from train_sft
    metadata = json.loads((out_dir / METADATA_FILE).read_text())
    assert (metadata["base_model"], metadata["base_model_source"], metadata["base_model_path"]) == ("gpt2", "hub",
                                                                                                    "gpt2")
    assert metadata["dataset"] == "HuggingFaceH4/ultrachat_200k" and metadata["num_samples"] == 24
    assert (metadata["data"]["source"], metadata["data"]["split"], metadata["data"]["format"]) == ("hub", "train_sft",
                                                                                                   "messages")

    # compare finds that base model again, by its Hub name, in the same cache
    compare = run_script("test_chatbot.py", "--model", str(out_dir), "--max-new-tokens", "4", cwd=tmp_path,
                         env={"HF_HOME": str(home)})
    assert compare.returncode == 0, compare.stderr[-2000:]
    assert json.loads((out_dir / "compare_report.json").read_text())["models"]["base"] == "gpt2"
