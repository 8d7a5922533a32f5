"""The real offline starter kit end to end: Gemma 3 270M base + ShareGPT instruction exchanges, no Hub."""

import json

import pytest
from conftest import run_script

from sft.train.metadata import METADATA_FILE


@pytest.mark.slow
def test_quick_test_falls_back_to_the_offline_kit_and_learns(tmp_path, temporary_cache):
    out_dir = tmp_path / "chatbot-test"
    # No --offline: the Hub is switched off (HF_HUB_OFFLINE=1), so the scripts must fall back by themselves.
    # The one test that uses the real cache, as a user's run does (the kit's model is converted there once).
    result = run_script("quick_test.py", "--output-dir", str(out_dir), "--max-steps", "6", "--logging-steps", "3",
                        cwd=tmp_path, timeout=1200, env={"SFT_CACHE_DIR": str(temporary_cache)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OFFLINE: The Hub is unreachable" in result.stdout

    metadata = json.loads((out_dir / METADATA_FILE).read_text())
    assert metadata["base_model_source"] == "offline-kit" and metadata["data"]["source"] == "offline-kit"
    assert metadata["base_model"] == "google/gemma-3-270m" and metadata["dataset"] == "sharegpt-first-exchanges"
    assert metadata["num_samples"] == 100 and metadata["results"]["optimizer_steps"] == 6
    assert 1 < metadata["results"]["eval_loss_before"] < 4  # a real pre-trained model, per-token cross-entropy
    assert metadata["results"]["eval_loss"] < metadata["results"]["eval_loss_before"]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tokenizer.decode(inputs["input_ids"][0]) == "<bos>User: What is the capital of France?\nAssistant:"

    def answer(folder):
        model = AutoModelForCausalLM.from_pretrained(folder)
        output = model.generate(**inputs, max_new_tokens=30, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id)
        return output[0, inputs["input_ids"].shape[1]:].tolist()

    # What six steps of SFT taught: to answer as the assistant. The base model role-plays both sides instead.
    tuned, base = (tokenizer.decode(answer(folder)) for folder in (out_dir, metadata["base_model_path"]))
    assert "Paris" in tuned and "User:" not in tuned and "Assistant:" not in tuned, tuned
    assert "\nUser:" in base, base
