"""Base models other than GPT-2: another end-of-text token, a BOS token, no pad token, a different
architecture. Tiny random configs of GPT-NeoX (Pythia's architecture) and Llama, with real tokenizers
available offline: GPT-2's (Pythia's is a close relative) and the offline kit's Gemma tokenizer, which
starts every text with <bos> and closes with <eos>, as Llama's does."""

import json

import pytest
from conftest import make_gpt2_tokenizer, quick_args, run_script

from sft.train.metadata import METADATA_FILE


def tiny_gpt_neox(kit_model_dir):  # GPT-2's tokenizer, which has no pad token
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tokenizer = make_gpt2_tokenizer()
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=128, max_position_embeddings=512,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return GPTNeoXForCausalLM(config), tokenizer


def tiny_llama(kit_model_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(kit_model_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config), tokenizer


@pytest.mark.parametrize("build", [tiny_gpt_neox, tiny_llama], ids=["gpt-neox", "llama"])
def test_other_architectures_train_mask_and_reload(build, tmp_path, chats_jsonl, kit_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = tmp_path / "base"
    model, tokenizer = build(kit_model_dir)
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    out_dir = tmp_path / "out"
    result = run_script("quick_test.py", *quick_args(base, chats_jsonl, out_dir, "--max-length", "512"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    # The first example: answers and their end-of-text token trained, with this tokenizer's own tokens.
    eos = tokenizer.eos_token
    assert f"{eos}]]" in result.stdout and "Assistant:[[ " in result.stdout
    metadata = json.loads((out_dir / METADATA_FILE).read_text())
    assert metadata["results"]["eval_loss"] < metadata["results"]["eval_loss_before"]

    tuned = AutoTokenizer.from_pretrained(out_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir)
    assert type(reloaded).__name__ == type(model).__name__
    generation = json.loads((out_dir / "generation_config.json").read_text())
    # README: models without a pad token pad with their end-of-text; Gemma's tokenizer has its own pad token
    assert generation["eos_token_id"] == tokenizer.eos_token_id
    assert generation["pad_token_id"] == (tokenizer.pad_token_id if tokenizer.pad_token else tokenizer.eos_token_id)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    ids = tuned.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1
    starts_with_bos = tokenizer.bos_token_id is not None and tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    assert (ids[0] == tokenizer.bos_token_id) == starts_with_bos
