"""LoRA: only the adapters train; the folder holds the merged model (for test_chatbot.py as it is) and the
adapter alone, and base + adapter gives the merged model's logits."""

import json

import pytest

from conftest import quick_args, run_script
from sft.metadata import METADATA_FILE


@pytest.fixture(scope="module")
def lora_run(tiny_gpt2_dir, chats_jsonl, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("lora") / "out"
    result = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--lora",
                                                     "--learning-rate", "2e-3"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out_dir, result


def test_only_the_adapters_are_trained(lora_run, tiny_gpt2_dir):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out_dir, result = lora_run
    metadata = json.loads((out_dir / METADATA_FILE).read_text())
    lora = metadata["lora"]
    assert lora["target_modules"] == ["c_attn", "c_fc", "c_proj"]  # GPT-2's fused attention and MLP layers
    assert 0 < lora["trainable_parameters"] < metadata["model_parameters"] / 20
    assert "trainable parameters" in result.stdout and metadata["eval_loss"] < metadata["eval_loss_before"]
    adapter = load_file(out_dir / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(out_dir).state_dict()
    for name, weight in base.items():  # embeddings and layer norms untouched; adapted layers changed
        adapted = name.endswith(("c_attn.weight", "c_fc.weight", "c_proj.weight"))
        assert torch.equal(weight, merged[name]) != adapted, name


def test_merged_model_equals_base_plus_adapter(lora_run, tiny_gpt2_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out_dir, _ = lora_run
    merged = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir),
                                             out_dir / "adapter").eval()
    ids = torch.tensor([[7454, 2402, 257, 640, 11, 612, 373, 257]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-4)


def test_the_folder_works_with_test_chatbot(lora_run):
    out_dir, _ = lora_run
    result = run_script("test_chatbot.py", "-p", "Hello", "--max-new-tokens", "4", "--model", str(out_dir))
    assert result.returncode == 0, result.stderr[-2000:]
