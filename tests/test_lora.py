"""LoRA: only the adapters train; the folder holds the merged model (for test_chatbot.py as it is) and the
adapter alone, and base + adapter gives the merged model's logits."""

import json

import pytest
from conftest import quick_args, run_script

from sft.train.metadata import METADATA_FILE


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
    assert (lora["learning_rate"], lora["learning_rate_from"], metadata["learning_rate"]) == (2e-3, "--learning-rate", 2e-3)
    assert 0 < lora["trainable_parameters"] < metadata["model_parameters"] / 20
    assert "trainable parameters" in result.stdout and metadata["results"]["eval_loss"] < metadata["results"]["eval_loss_before"]
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


# ----------------------------------------------------------------------------- QLoRA

def test_qlora_without_a_gpu_says_why(tiny_gpt2_dir, chats_jsonl, tmp_path):
    from test_faults import assert_clean_failure

    result = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, tmp_path / "out", "--qlora"),
                        env={"CUDA_VISIBLE_DEVICES": ""})  # no GPU, even on a machine that has one
    assert_clean_failure(result, "--qlora loads the base model in 4 bits with bitsandbytes, which needs an NVIDIA GPU")
    assert "Use --lora instead" in result.stderr and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def qlora_run(tiny_gpt2_dir, chats_jsonl, tmp_path_factory):
    """--qlora through the real code path. bitsandbytes 0.50 also runs 4-bit layers on the CPU (slowly), so
    only the GPU check is bypassed; the loads are recorded to see what was 4-bit."""
    import train_chatbot
    from sft import models
    from sft.train import preflight

    out_dir = tmp_path_factory.mktemp("qlora") / "out"
    loads, load_model = [], models.load_model

    def recorded_load(*args, **kwargs):
        model = load_model(*args, **kwargs)
        loads.append(bool(getattr(model, "is_loaded_in_4bit", False)))
        return model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(preflight, "qlora_unavailable", lambda device: None)
        # bitsandbytes' CPU-only inference layout (AVX512-BF16), taken at the first evaluation, breaks training
        # afterwards; CUDA never takes it.
        patch.setattr("bitsandbytes.nn.modules.has_avx512bf16", lambda: False)
        patch.setattr(models, "load_model", recorded_load)
        train_chatbot.main(quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--qlora", "--learning-rate", "2e-3",
                                      "--batch-size", "6", "--gradient-accumulation-steps", "1"))
    return out_dir, loads


def test_qlora_trains_on_a_4bit_base_and_merges_into_the_full_precision_one(qlora_run, tiny_gpt2_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out_dir, loads = qlora_run
    assert loads == [True, False]  # trained on the 4-bit base; merged into a full-precision reload of it
    metadata = json.loads((out_dir / METADATA_FILE).read_text())
    assert "4-bit" in metadata["lora"]["base_weights"] and metadata["settings"]["qlora"]
    assert metadata["results"]["eval_loss"] < metadata["results"]["eval_loss_before"]
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    assert merged.dtype == torch.float32
    assert torch.equal(base.transformer.wte.weight, merged.transformer.wte.weight)
    assert not torch.equal(base.transformer.h[0].attn.c_attn.weight, merged.transformer.h[0].attn.c_attn.weight)
    # Merged into full precision: base + adapter, with no 4-bit rounding of the merged weights.
    with_adapter = PeftModel.from_pretrained(base, out_dir / "adapter").eval()
    ids = torch.tensor([[7454, 2402, 257, 640, 11, 612, 373, 257]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-4)


def test_lora_on_named_layers_with_dropout(tiny_gpt2_dir, chats_jsonl, tmp_path):
    out_dir = tmp_path / "out"
    result = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--lora",
                                                     "--lora-target-modules", "c_attn", "--lora-dropout", "0.1"))
    assert result.returncode == 0, result.stderr[-2000:]
    metadata = json.loads((out_dir / METADATA_FILE).read_text())
    lora = metadata["lora"]
    assert lora["target_modules"] == ["c_attn"] and lora["dropout"] == 0.1
    # No --learning-rate: LoRA's own, said in the log and kept in the metadata.
    assert (lora["learning_rate"], lora["learning_rate_from"], metadata["learning_rate"]) == (2e-4, "LORA_LEARNING_RATE", 2e-4)
    assert "learning rate 0.0002 (LORA_LEARNING_RATE)" in result.stdout
    adapter_config = json.loads((out_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["target_modules"] == ["c_attn"] and adapter_config["lora_dropout"] == 0.1


def test_lora_on_a_layer_the_model_lacks_names_the_ones_it_has(tiny_gpt2_dir, chats_jsonl, tmp_path):
    from test_faults import assert_clean_failure

    result = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, tmp_path / "out", "--lora",
                                                     "--lora-target-modules", "c_attn,q_proj"))
    assert_clean_failure(result, "--lora-target-modules q_proj: no such linear layer in",
                         documented="--lora-target-modules NAME: no such linear layer")
    assert "its linear layers are c_attn, c_fc, c_proj, lm_head" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, expected", [
    (["--lora"], 2e-4), (["--qlora"], 2e-4), ([], 2e-5),
    (["--lora", "--learning-rate", "5e-5"], 5e-5),
    (["--lora", "--learning-rate=2e-5"], 2e-5),  # typed, though equal to the default: never overridden
    (["--lora", "--learning-rate", "3e-5", "--lora-learning-rate", "1e-3"], 3e-5),
    (["--lora", "--lora-learning-rate", "1e-3"], 1e-3),
])
def test_lora_uses_its_own_learning_rate_unless_one_is_typed(argv, expected):
    from pathlib import Path

    import train_chatbot
    from sft import settings

    parsed = settings.parse(settings.constants(vars(train_chatbot)), argv, "", Path(train_chatbot.__file__))
    assert parsed.learning_rate == expected
