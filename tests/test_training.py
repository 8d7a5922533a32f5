"""The training scripts end to end, as a user runs them: real Trainer, real folder, real reload."""

import json

import pytest
import torch
from conftest import quick_args, run_script

from sft import devices
from sft.generation import CHAT_DEFAULTS, chat_defaults
from sft.train.metadata import METADATA_FILE

TUTORIAL_FIELDS = ["base_model", "dataset", "num_samples", "num_epochs", "learning_rate", "model_parameters"]


def test_quick_test_writes_a_complete_model_folder(quick_run):
    out_dir, _ = quick_run
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "loss_curve.png", METADATA_FILE, "README.md"):
        assert (out_dir / name).is_file(), name
    assert not list(out_dir.glob("*.bin")) and not list(out_dir.parent.glob(".chatbot-test*"))
    generation = json.loads((out_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 50256 and generation["pad_token_id"] == 50256
    # the chat defaults that local chat tools and the chat modes read (compare and eval stay greedy)
    assert {key: generation.get(key) for key in CHAT_DEFAULTS} == CHAT_DEFAULTS
    assert chat_defaults(out_dir) == CHAT_DEFAULTS


def test_metadata_is_complete_and_plausible(quick_run, tiny_gpt2_dir, chats_jsonl):
    out_dir, _ = quick_run
    metadata = json.loads((out_dir / METADATA_FILE).read_text())
    assert list(metadata) == [*TUTORIAL_FIELDS, "stage", "base_model_source", "base_model_path", "data", "lora",
                              "results", "environment", "settings"]
    data, results, environment = metadata["data"], metadata["results"], metadata["environment"]
    assert all(metadata[field] is not None for field in TUTORIAL_FIELDS) and metadata["stage"] == "sft"
    assert metadata["base_model"] == str(tiny_gpt2_dir) and metadata["base_model_source"] == "local"
    assert metadata["dataset"] == str(chats_jsonl) and data["source"] == "local"
    assert metadata["num_samples"] == 24 and data["num_eval_samples"] == 32
    assert results["optimizer_steps"] == 4 and metadata["settings"]["max_steps"] == 4
    assert metadata["settings"]["batch_size"] == 5 and metadata["settings"]["gradient_accumulation_steps"] == 1
    assert results["effective_batch_size"] == 5 and environment["num_processes"] == 1
    assert metadata["learning_rate"] == 2e-5 and metadata["settings"]["max_length"] == 1024  # train_chatbot's own
    from transformers import AutoModelForCausalLM
    assert metadata["model_parameters"] == AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).num_parameters()
    # a random 50k-way model starts near ln(50257) = 10.8 per token; sums would be far larger
    assert 9 < results["eval_loss_before"] < 12 and 9 < results["final_train_loss"] < 12
    assert results["eval_loss"] < results["eval_loss_before"]
    assert data["trained_tokens_per_epoch"] > 0 and results["tokens_processed"] > 0
    assert results["tokens_per_second"] > 0 and 0 < results["train_seconds"] < results["total_seconds"]
    assert environment["device"].startswith("cpu")
    assert environment["precision"] == ("bf16" if devices.cpu_has_bf16() else "fp32")  # --precision auto
    assert set(environment["library_versions"]) >= {"torch", "transformers", "trl", "datasets"}


def test_log_shows_losses_tokens_per_second_and_the_trained_tokens(quick_run):
    _, result = quick_run
    assert "[[ " in result.stdout and "<|endoftext|>]]" in result.stdout  # first example, trained part marked
    assert "eval  | step     0 | eval loss" in result.stdout
    step_lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len(step_lines) == 2 and all("tok/s" in line and "lr " in line for line in step_lines)
    assert "Estimated time on this CPU" in result.stdout


def test_saved_folder_reloads_and_chats_through_its_template(quick_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir, _ = quick_run
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "User: What is the capital of France?\nAssistant:"
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    # test_chatbot.py, loading the same folder, gives the same greedy answer to the same message
    chat = run_script("test_chatbot.py", "-p", messages[0]["content"], "--max-new-tokens", "6", "--model", str(out_dir),
                      "--greedy")  # the folder's own chat defaults would sample
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert answer and chat.stdout.strip() == answer


def test_same_run_again_replaces_the_folder_but_other_settings_need_overwrite(quick_run, tiny_gpt2_dir,
                                                                               chats_jsonl, tmp_path):
    import shutil

    out_dir = tmp_path / "chatbot-test"
    shutil.copytree(quick_run[0], out_dir)
    created = json.loads((out_dir / METADATA_FILE).read_text())["environment"]["created_at"]
    refused = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--seed", "7"))
    assert refused.returncode == 2 and "--overwrite" in refused.stderr and "seed" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert json.loads((out_dir / METADATA_FILE).read_text())["environment"]["created_at"] == created  # untouched
    (out_dir / "loss_curve.png").write_bytes(b"from the earlier run")
    again = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--logging-steps", "1"))
    assert again.returncode == 0, again.stderr[-2000:]  # the same settings (a run control changed): no --overwrite
    assert (out_dir / "loss_curve.png").read_bytes() != b"from the earlier run"  # replaced, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chatbot-test"]  # nothing left beside it


def test_demo_and_full_scripts_share_the_code_with_their_own_constants():
    import demo_train
    import quick_test
    import train_chatbot

    assert (train_chatbot.NUM_TRAIN_SAMPLES, train_chatbot.OUTPUT_DIR) == (5000, "./chatbot-finetuned")
    assert train_chatbot.BASE_MODEL == "gpt2" and train_chatbot.DATASET_SPLIT == "train_sft"
    assert (train_chatbot.NUM_EPOCHS, train_chatbot.LEARNING_RATE) == (3, 2e-5)
    assert (demo_train.NUM_TRAIN_SAMPLES, demo_train.NUM_EPOCHS, demo_train.OUTPUT_DIR) == (1000, 1, "./chatbot-demo")
    assert (quick_test.NUM_TRAIN_SAMPLES, quick_test.MAX_STEPS, quick_test.OUTPUT_DIR) == (100, 20, "./chatbot-test")
    help_text = run_script("demo_train.py", "--help").stdout
    assert "A middle-sized run: 1,000 chats" in help_text  # its own description, not train_chatbot.py's
    assert "--num-train-samples" in help_text and "(default: 1000)" in help_text
    assert "--base-model" in help_text and "(default: gpt2)" in help_text
    assert "--num-epochs" in help_text and "(default: 1.0)" in help_text
    assert "--constraint-share" in help_text and "(default: 0.5)" in help_text  # the kit's form chats (BENCHMARKS.md)


@pytest.mark.parametrize("script, folder, requested", [("demo_train.py", "chatbot-demo", 1000),
                                                       ("train_chatbot.py", "chatbot-finetuned", 5000)])
def test_demo_and_full_scripts_run_into_their_own_folders(tmp_path, tiny_gpt2_dir, chats_jsonl, script, folder,
                                                          requested):
    result = run_script(script, "--base-model", str(tiny_gpt2_dir), "--dataset-name", str(chats_jsonl),
                        "--max-steps", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metadata = json.loads((tmp_path / folder / METADATA_FILE).read_text())
    assert metadata["settings"]["num_train_samples"] == requested
    assert metadata["num_samples"] + metadata["data"]["num_eval_samples"] == 80  # all the fixture has, with a notice
    assert f"only 80 usable conversations: training on {metadata['num_samples']} instead of {requested}" \
        in result.stdout


def test_model_card_describes_the_run_and_pipeline_chats_through_the_template(quick_run, tiny_gpt2_dir):
    from transformers import pipeline

    out_dir, _ = quick_run
    metadata = json.loads((out_dir / METADATA_FILE).read_text())
    card = (out_dir / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "pipeline_tag: text-generation" in card
    assert str(tiny_gpt2_dir) in card and metadata["dataset"] in card
    results = metadata["results"]
    assert f"{results['eval_loss_before']:.3f} before, {results['eval_loss']:.3f} after" in card
    assert "User: What is the capital of France?\nAssistant: The capital of France is Paris.<|endoftext|>" in card
    assert "licences" in card

    chat = pipeline("text-generation", model=str(out_dir))
    reply = chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=5, do_sample=False)
    conversation = reply[0]["generated_text"]
    assert [m["role"] for m in conversation] == ["user", "assistant"]
    prompt = chat.tokenizer.apply_chat_template(conversation[:1], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("\nAssistant:")  # the saved template, not a default one


def test_report_to_tensorboard_logs_losses_beside_the_output(tmp_path, tiny_gpt2_dir, chats_jsonl):
    out_dir = tmp_path / "out"
    result = run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, out_dir, "--report-to", "tensorboard"),
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    logged = b"".join(events.read_bytes() for events in (tmp_path / "runs" / "out").glob("events.out.tfevents.*"))
    assert b"train/loss" in logged and b"eval/loss" in logged
    assert b"answers" in logged and b"What is the capital of France?" in logged  # the answers at each evaluation
    assert (out_dir / "loss_curve.png").is_file()  # still written


def test_report_to_a_logger_that_is_not_installed(tmp_path, tiny_gpt2_dir, chats_jsonl, monkeypatch, capsys):
    """wandb as if it were not installed, whether it is here or not: refused before anything is loaded."""
    import importlib.util

    from test_faults import assert_clean_failure, quick_test_in_process

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    result = quick_test_in_process(quick_args(tiny_gpt2_dir, chats_jsonl, tmp_path / "out", "--report-to", "wandb"),
                                   capsys)
    assert_clean_failure(result, "--report-to wandb needs the wandb package: pip install wandb",
                         "--report-to X needs the X package")
    assert "Model:" not in result.stdout and not (tmp_path / "out").exists()


def test_rerun_on_the_same_chats_loads_them_tokenized_and_trains_the_same(tmp_path, tiny_gpt2_dir, chats_jsonl,
                                                                          monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    first, second = tmp_path / "first", tmp_path / "second"
    runs = [run_script("quick_test.py", *quick_args(tiny_gpt2_dir, chats_jsonl, out)) for out in (first, second)]
    assert all(run.returncode == 0 for run in runs), runs[-1].stderr[-3000:]
    assert "tokenized by an earlier run" not in runs[0].stdout and "tokenized by an earlier run" in runs[1].stdout
    assert len(list((tmp_path / "cache" / "tokenized").iterdir())) == 2  # training and held-out chats
    weights = [load_file(out / "model.safetensors") for out in (first, second)]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


@pytest.mark.parametrize("module, script", [("train_chatbot", "quick_test.py"), ("train_dpo", "train_dpo.py")])
def test_every_constant_is_a_flag_whose_help_is_its_comment(module, script):
    import importlib

    from conftest import ROOT

    from sft import settings

    constants = settings.constants(vars(importlib.import_module(module)))
    helps = settings.help_texts(ROOT / f"{module}.py")
    assert set(helps) == set(constants) and all(helps.values())
    help_text = " ".join(run_script(script, "--help").stdout.split())
    for name, comment in helps.items():
        flag = "--" + name.lower().replace("_", "-")
        assert flag in help_text and " ".join(comment.split())[:30] in help_text, name
