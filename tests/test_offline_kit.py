"""The real offline starter kit end to end: Gemma 3 270M base + chatterbot corpus, no Hub."""

import json

import pytest

from conftest import run_script
from sft.metadata import METADATA_FILE


@pytest.mark.slow
def test_quick_test_falls_back_to_the_offline_kit_and_learns(tmp_path):
    out_dir = tmp_path / "chatbot-test"
    # No --offline: the Hub is switched off (HF_HUB_OFFLINE=1), so the scripts must fall back by themselves.
    result = run_script("quick_test.py", "--output-dir", str(out_dir), "--max-steps", "6", "--logging-steps", "3",
                        cwd=tmp_path, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OFFLINE: The Hub is unreachable" in result.stdout

    metadata = json.loads((out_dir / METADATA_FILE).read_text())
    assert metadata["base_model_source"] == "offline-kit" and metadata["dataset_source"] == "offline-kit"
    assert metadata["base_model"] == "google/gemma-3-270m"
    assert metadata["num_samples"] == 100 and metadata["optimizer_steps"] == 6
    assert 2 < metadata["eval_loss_before"] < 6  # a real pre-trained model, per-token cross-entropy
    assert metadata["eval_loss"] < metadata["eval_loss_before"]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    assert tokenizer.decode(inputs["input_ids"][0]) == "<bos>User: Hello\nAssistant:"
    output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]
