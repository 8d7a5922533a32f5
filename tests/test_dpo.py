"""train_dpo.py: preference pairs (from files and self-generated offline), the DPO run on the tiny model, its
folder (same template, metadata chain base -> SFT -> DPO), compare and eval against the SFT model, bad input,
Ctrl-C and resume."""

import json

import pytest
from conftest import QA, ROOT, kill_when_paused, run_script, start_script, write_jsonl

from sft.data import preferences
from sft.errors import UserError
from sft.train.metadata import METADATA_FILE


def dpo_args(sft_dir, out_dir, *extra):
    """A few optimizer steps of DPO on the tiny SFT model."""
    return ["--sft-model", str(sft_dir), "--output-dir", str(out_dir), "--max-steps", "6", "--logging-steps", "2",
            "--num-pairs", "24", "--eval-pairs", "12", "--batch-size", "4", "--gradient-accumulation-steps", "1",
            *extra]


@pytest.fixture(scope="session")
def pairs_jsonl(tmp_path_factory):
    """60 pairs in every accepted shape: text, messages, and UltraFeedback's whole conversations."""
    records = []
    for i in range(60):
        question, answer = QA[i % len(QA)]
        prompt = f"{question} ({i})"
        if i % 3 == 0:
            records.append({"prompt": prompt, "chosen": answer, "rejected": "I do not know, sorry."})
        elif i % 3 == 1:
            records.append({"prompt": [{"role": "user", "content": prompt}],
                            "chosen": [{"role": "assistant", "content": answer}],
                            "rejected": [{"role": "assistant", "content": "Banana banana banana."}]})
        else:  # UltraFeedback: the prompt as text, each answer as the whole conversation
            user = {"role": "user", "content": prompt}
            records.append({"prompt": prompt, "chosen": [user, {"role": "assistant", "content": answer}],
                            "rejected": [user, {"role": "assistant", "content": "No."}]})
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", records)


@pytest.fixture(scope="session")
def dpo_run(quick_run, pairs_jsonl, tmp_path_factory):
    """One real train_dpo.py run on quick_test.py's tiny SFT model, at a learning rate that moves a tiny model."""
    sft_dir, _ = quick_run
    out_dir = tmp_path_factory.mktemp("dpo") / "chatbot-dpo"
    result = run_script("train_dpo.py", *dpo_args(sft_dir, out_dir, "--pairs", str(pairs_jsonl),
                                                   "--learning-rate", "1e-3"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out_dir, result


# --- pairs ---------------------------------------------------------------------------------------
def test_every_accepted_shape_becomes_the_same_conversational_pair():
    user, answer = {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}
    expected = {"prompt": [user], "chosen": [answer], "rejected": [{"role": "assistant", "content": "No."}]}
    assert preferences.to_pair({"prompt": "Hi?", "chosen": "Hello.", "rejected": "No."}) == expected
    assert preferences.to_pair({"prompt": [user], "chosen": [answer], "rejected": "No."}) == expected
    assert preferences.to_pair({"prompt": "Hi?", "chosen": [user, answer],
                                "rejected": [user, {"role": "assistant", "content": "No."}]}) == expected


@pytest.mark.parametrize("record, message", [
    ({"prompt": "Hi?", "chosen": "Hello."}, "missing or empty rejected"),
    ({"prompt": "", "chosen": "Hello.", "rejected": "No."}, "missing or empty prompt"),
    ({"prompt": "Hi?", "chosen": 3, "rejected": "No."}, "chosen must be text or a list"),
    ({"prompt": "Hi?", "chosen": [{"role": "user", "content": "Hi?"}], "rejected": "No."}, "chosen must be the assistant"),
    ({"prompt": "Hi?", "chosen": [{"role": "user", "content": "Other?"}, {"role": "assistant", "content": "A."}],
      "rejected": "No."}, "chosen must be the assistant's answer alone"),  # a prompt that does not match is not cut
    ({"prompt": [{"role": "human", "content": "Hi?"}], "chosen": "A.", "rejected": "B."}, "roles system, user"),
])
def test_a_malformed_pair_is_refused(record, message):
    with pytest.raises(preferences.load.RecordError, match=message):
        preferences.to_pair(record)


def test_pairs_that_teach_nothing_or_touch_the_evaluation_are_dropped():
    from sft.eval.ifeval import prompts

    ifeval_prompt = prompts(1)[0]["prompt"]
    pair = preferences.to_pair({"prompt": "What is 2 plus 2?", "chosen": "4.", "rejected": "5."})
    same = preferences.to_pair({"prompt": "What is 3 plus 3?", "chosen": "6.", "rejected": "6."})
    leaked = preferences.to_pair({"prompt": ifeval_prompt, "chosen": "A.", "rejected": "B."})
    kept, dropped = preferences.keep_pairs([pair, same, leaked], "test")
    assert kept == [pair] and dropped == {"chosen equals rejected": 1, "prompt overlaps IFEval": 1}
    with pytest.raises(UserError, match=r"no usable pair to train on \(1 dropped: chosen equals rejected\)"):
        preferences.keep_pairs([same], "test")
    assert preferences.keep_pairs([same], "test", required=False) == ([], {"chosen equals rejected": 1,
                                                                         "prompt overlaps IFEval": 0})


# --- the run -------------------------------------------------------------------------------------
def test_the_dpo_loss_falls_and_the_log_shows_its_rewards(dpo_run):
    out_dir, result = dpo_run
    record = json.loads((out_dir / METADATA_FILE).read_text())
    results = record["results"]
    # Before training the model is its own reference: every reward 0, the loss ln 2.
    assert abs(results["eval_loss_before"] - 0.6931) < 1e-3
    assert results["eval_loss"] < 0.6 and results["eval_preference_accuracy"] > 0.9
    assert results["eval_reward_chosen"] > 0 > results["eval_reward_rejected"]
    assert "Training: 6 optimizer steps of 4 preference pairs" in result.stdout
    assert "reward chosen" in result.stdout and "preference accuracy" in result.stdout
    assert "Pairs: " in result.stdout and "24 to train on, 12 held out" in result.stdout
    assert "Held-out pairs: DPO loss 0.693 (SFT) ->" in result.stdout


def test_the_folder_keeps_the_sft_template_and_records_the_chain(dpo_run, quick_run, tiny_gpt2_dir, pairs_jsonl,
                                                                  chats_jsonl):
    from transformers import AutoTokenizer

    out_dir, _ = dpo_run
    sft_dir, _ = quick_run
    assert AutoTokenizer.from_pretrained(out_dir).chat_template == AutoTokenizer.from_pretrained(sft_dir).chat_template
    record = json.loads((out_dir / METADATA_FILE).read_text())
    assert record["stage"] == "dpo" and record["beta"] == 0.1
    assert record["base_model_path"] == str(sft_dir.resolve()) and record["base_model_source"] == "local"
    assert record["sft_model"] == {"path": str(sft_dir.resolve()), "base_model": str(tiny_gpt2_dir),
                                   "dataset": str(chats_jsonl), "stage": "sft"}  # what the SFT model learnt from
    assert record["dataset"] == str(pairs_jsonl) and record["num_samples"] == 24
    assert record["data"]["num_eval_samples"] == 12 and record["data"]["rejected_from"] == "the dataset"
    for name in ("model.safetensors", "loss_curve.png", "README.md"):
        assert (out_dir / name).is_file(), name
    card = (out_dir / "README.md").read_text()
    assert "preference-tuned (DPO)" in card and "beta 0.1" in card and "User: What is the capital" in card


def test_the_dpo_model_reloads_and_chats_through_the_same_template(dpo_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir, _ = dpo_run
    result = run_script("test_chatbot.py", "--model", str(out_dir), "-p", "What is the capital of France?",
                        "--max-new-tokens", "8", "--greedy")  # the folder's own chat defaults would sample
    assert result.returncode == 0, result.stderr[-2000:]
    tokenizer, model = AutoTokenizer.from_pretrained(out_dir), AutoModelForCausalLM.from_pretrained(out_dir)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**ids, max_new_tokens=8, do_sample=False)
    expected = tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert result.stdout.strip() == expected


def test_compare_and_eval_put_the_dpo_model_beside_its_sft_model(dpo_run, quick_run):
    from sft.eval.evaluate import held_out_chats

    out_dir, _ = dpo_run
    sft_dir, _ = quick_run
    compared = run_script("test_chatbot.py", "--mode", "compare", "--model", str(out_dir), "--max-new-tokens", "6")
    assert compared.returncode == 0, compared.stderr[-2000:]
    assert "| SFT |" in compared.stdout and "| DPO |" in compared.stdout and "| base |" not in compared.stdout
    report = json.loads((out_dir / "compare_report.json").read_text())
    assert report["models"] == {"SFT": str(sft_dir), "DPO": str(out_dir)}
    # Held-out loss: DPO learnt from pairs, so the chats held out from its SFT model's run are used.
    dpo_record, sft_record = (json.loads((folder / METADATA_FILE).read_text()) for folder in (out_dir, sft_dir))
    assert held_out_chats(dpo_record) == held_out_chats(sft_record) and held_out_chats(sft_record)
    evaluated = run_script("test_chatbot.py", "--mode", "eval", "--model", str(out_dir), "--limit", "3",
                           "--max-new-tokens", "6")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    first_table = evaluated.stdout.split("IFEval's instruction types")[0]  # then the taught / not taught table
    rows = [line for line in first_table.splitlines() if line.startswith(("| SFT |", "| DPO |"))]
    assert len(rows) == 2 and all(row.rstrip(" |").split("| ")[-1][0].isdigit() for row in rows)  # a held-out loss
    assert "Preference-tuned (DPO) from" in (out_dir / "report.md").read_text()


def test_the_browser_chat_serves_sft_and_dpo_under_their_names(dpo_run):
    import httpx
    from test_web import start_server, stop_server

    out_dir, _ = dpo_run
    process, address, _ = start_server("--model", str(out_dir))
    try:
        info = httpx.get(address + "/api/info").json()
        assert info["titles"] == {"base": "SFT model", "fine-tuned": "DPO model"} and "DPO from" in info["about"]
    finally:
        stop_server(process)


def test_offline_pairs_are_the_sft_models_own_answers_generated_once_and_cached(quick_run, tmp_path):
    import train_dpo
    from sft import settings

    sft_dir, _ = quick_run
    args = ["--quick", "--offline", "--pairs", "self-generated", "--max-steps", "1", "--num-pairs", "8",
            "--eval-pairs", "4", "--rejected-max-new-tokens", "8", "--sft-model", str(sft_dir),
            "--output-dir", str(tmp_path / "a")]
    first = run_script("train_dpo.py", *args)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "Pairs: self-generated [from offline-kit]: 8 to train on, 4 held out" in first.stdout
    assert "Rejected answers: the SFT model's own" in first.stdout
    record = json.loads((tmp_path / "a" / METADATA_FILE).read_text())
    assert record["dataset"] == "self-generated" and record["data"]["source"] == "offline-kit"
    assert "the SFT model's own" in record["data"]["rejected_from"]
    # The same settings again: the answers come from the cache, without the model (None here) writing any.
    s = settings.parse(settings.constants(vars(train_dpo)), args, "", ROOT / "train_dpo.py",
                       presets={"quick": train_dpo.QUICK_RUN})
    pairs = preferences.self_generated_pairs(s, None, None, [])
    cached = json.loads(preferences.answers_cache(s, [p["prompt"] for p in pairs.train + pairs.eval]).read_text())
    assert [p["rejected"][0]["content"] for p in pairs.train + pairs.eval] == cached
    assert len(cached) == 12 and len(set(cached)) > 1  # the SFT model's own sampled answers, 8 + 4
    assert all(p["chosen"] != p["rejected"] and p["prompt"][-1]["role"] == "user" for p in pairs.train)


def test_rejected_temperature_0_writes_the_greedy_answers_that_eval_scores(quick_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import train_dpo
    from sft import settings
    from sft.eval import compare
    from sft.generation import Decoding

    sft_dir, _ = quick_run
    s = settings.parse(settings.constants(vars(train_dpo)), ["--rejected-temperature", "0",
                       "--rejected-max-new-tokens", "12"], "", ROOT / "train_dpo.py")
    assert preferences.rejected_decoding(s).describe() == "greedy"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(sft_dir), AutoTokenizer.from_pretrained(sft_dir)
    prompts = [[{"role": "user", "content": q}] for q, _ in QA[:3]]
    rejected = preferences.generate(model, tokenizer, prompts, s)
    greedy, _ = compare.generate_answers(model, tokenizer, prompts, Decoding(max_new_tokens=12, batch_size=3))
    assert rejected == [answer.text for answer in greedy]
    s.rejected_temperature = 0.7  # sampled, as in the chat: other answers from the same model
    assert preferences.generate(model, tokenizer, prompts, s) != rejected


LOOPING = "Yes, I can help. " + "I am always willing to help others. " * 3 + "I am"
LIST_LOOP = "Three questions:\n- What is your role?\n- What are your goals?\n- What is your role?\n-"


@pytest.mark.parametrize("answer, before_loop", [
    (LOOPING, "Yes, I can help. I am always willing to help others."),  # a sentence said again
    (LIST_LOOP, "Three questions:\n- What is your role?\n- What are your goals?"),  # a line said again
    ("Steps, as follows:\n- Go on and on and on.\n- Go on and on and on.", "Steps, as follows:\n- Go on and on and "
     "on."),
    ("Sure thing. Sure thing. Sure thing.", ""),  # too little before the loop: the corpus answer stays chosen
    ("Paris is the capital of France. It lies on the Seine.", ""),  # no loop: the corpus answer stays chosen
    ("***\n***\n***\n***", ""),  # loops from the start
])
def test_an_answer_that_loops_is_cut_at_its_last_sentence_before_the_loop(answer, before_loop):
    from sft.eval.compare import has_repetition

    assert preferences.cut_before_loop(answer) == before_loop
    assert answer.startswith(before_loop) and not has_repetition(before_loop)


def test_stop_before_loops_prefers_the_sft_models_own_answer_cut_before_its_loop(quick_run):
    import train_dpo
    from sft import settings

    sft_dir, _ = quick_run
    args = ["--offline", "--num-pairs", "3", "--eval-pairs", "1", "--sft-model", str(sft_dir), "--stop-before-loops"]
    s = settings.parse(settings.constants(vars(train_dpo)), args, "", ROOT / "train_dpo.py")
    chats, _ = preferences.kit_chats(s, [])
    cache = preferences.answers_cache(s, [chat[:-1] for chat in chats])  # the SFT model's answers, as if written
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps([LOOPING, "A short answer that does not loop.", LIST_LOOP, LOOPING]))
    pairs = preferences.self_generated_pairs(s, None, None, [])  # no model: the answers are read from the cache
    assert [p["chosen"][0]["content"] for p in pairs.train] == [
        "Yes, I can help. I am always willing to help others.", chats[1][-1]["content"],  # the corpus answer
        "Three questions:\n- What is your role?\n- What are your goals?"]
    assert pairs.eval[0]["chosen"][0]["content"] == "Yes, I can help. I am always willing to help others."
    assert "for the 3 that loop, that answer cut before its loop" in pairs.rejected_from


@pytest.mark.parametrize("answer, rejected", [
    ("Paris is big. It is old! Visit it.", {"Paris is big." + " Paris is big." * 3,
                                           "Paris is big. It is old!" + " It is old!" * 3,
                                           "Paris is big. It is old! Visit it." + " Visit it." * 3}),
    ("Steps:\n1. Mix the flour.\n2. Bake it.", {"Steps:" + "\nSteps:" * 3,  # a line again on its own line
                                              "Steps:\n1. Mix the flour." + "\n1. Mix the flour." * 3,
                                              "Steps:\n1. Mix the flour.\n2. Bake it." + "\n2. Bake it." * 3}),
])
def test_a_kit_loops_rejected_answer_says_one_of_its_sentences_again_from_there(answer, rejected):
    import random

    from sft.eval.compare import has_repetition

    looped = {preferences.looping(answer, random.Random(seed)) for seed in range(20)}
    assert looped == rejected and all(has_repetition(one) for one in looped) and not has_repetition(answer)


def test_kit_loops_pairs_need_no_model_and_hold_out_the_kits_test_split(quick_run, tmp_path):
    import os

    import train_dpo
    from sft import settings
    from sft.eval.compare import has_repetition

    sft_dir, _ = quick_run
    args = ["--pairs", "kit-loops", "--num-pairs", "6", "--eval-pairs", "3", "--sft-model", str(sft_dir)]
    s = settings.parse(settings.constants(vars(train_dpo)), args, "", ROOT / "train_dpo.py")
    pairs = preferences.load_pairs(s, None, None, hub_available=lambda: True)  # no model, no Hub asked: none needed
    chats, _ = preferences.kit_chats(s, [])
    assert (pairs.name, pairs.source, len(pairs.train), len(pairs.eval)) == ("kit-loops", "offline-kit", 6, 3)
    for pair, chat in zip(pairs.train + pairs.eval, chats):
        answer, rejected = chat[-1]["content"], pair["rejected"][0]["content"]
        assert pair["prompt"] == chat[:-1] and pair["chosen"] == chat[-1:]
        assert rejected != answer and has_repetition(rejected) and os.path.commonprefix([answer, rejected]).strip()
    assert "said 3 times more" in pairs.rejected_from
    result = run_script("train_dpo.py", *dpo_args(sft_dir, tmp_path / "loops", "--pairs", "kit-loops",
                                                   "--max-steps", "1", "--eval-pairs", "4"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Pairs: kit-loops [from offline-kit]: 24 to train on, 4 held out" in result.stdout
    assert "Rejected loops left open (no end of turn after them): 24 of 24 to train on, 4 of 4 held out." in result.stdout
    assert "Generating" not in result.stdout + result.stderr  # nothing is generated
    record = json.loads((tmp_path / "loops" / METADATA_FILE).read_text())
    assert record["dataset"] == "kit-loops" and "ShareGPT" in (tmp_path / "loops" / "README.md").read_text()


CHATML_CLOSE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}" \
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"  # another model's own template


@pytest.mark.parametrize("template", ["the project's", "ChatML"])
def test_kit_loops_rejected_answers_are_left_open_and_the_chosen_ones_end(quick_run, tmp_path, template, capsys):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    sft_dir, _ = quick_run
    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    end = tokenizer.eos_token
    if template == "ChatML":
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tokenizer.chat_template, end = CHATML_CLOSE, "<|im_end|>\n"
    pairs = Dataset.from_list([{"prompt": [{"role": "user", "content": "Name two colours."}],
                                "chosen": [{"role": "assistant", "content": "Red. Blue."}],
                                "rejected": [{"role": "assistant", "content": "Red. Red. Red."}]}])
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(sft_dir), train_dataset=pairs,
                         eval_dataset=pairs, processing_class=tokenizer,
                         args=DPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True))
    assert tokenizer.decode(trainer.train_dataset[0]["rejected_ids"]).endswith("Red. Red. Red." + end)

    preferences.leave_loops_open(trainer, tokenizer)
    assert "left open (no end of turn after them): 1 of 1 to train on, 1 of 1 held out." in capsys.readouterr().out
    for pair in (trainer.train_dataset[0], trainer.eval_dataset[0]):
        assert tokenizer.decode(pair["rejected_ids"]).endswith("Red. Red. Red.")  # the loop runs on
        assert tokenizer.decode(pair["chosen_ids"]).endswith("Red. Blue." + end)  # the answer to prefer ends


def test_dpo_on_a_dpo_model_is_compared_under_another_name_than_the_model_it_continued():
    from sft.eval.compare import contender_names

    assert contender_names({"stage": "dpo", "sft_model": {"stage": "sft"}}) == ("SFT", "DPO")
    assert contender_names({"stage": "dpo", "sft_model": {"stage": "dpo"}}) == ("DPO", "DPO, second pass")


def test_quick_changes_only_the_settings_not_typed():
    import train_dpo
    from sft import settings

    def parse(*argv):
        return settings.parse(settings.constants(vars(train_dpo)), list(argv), "", ROOT / "train_dpo.py",
                              presets={"quick": train_dpo.QUICK_RUN})

    assert parse().sft_model == "./chatbot-finetuned" and parse().max_steps == 0
    quick = parse("--quick")
    assert (quick.sft_model, quick.output_dir, quick.pairs, quick.max_steps) == (
        "./chatbot-test", "./chatbot-dpo-test", "kit-loops", 12)
    assert parse("--quick", "--max-steps", "3", "--sft-model", "./mine").max_steps == 3
    assert parse("--quick", "--sft-model", "./mine").sft_model == "./mine"


# --- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case, message", [
    ("missing", "no fine-tuned model at"),
    ("no template", "has no chat template"),
    ("same folder", "--output-dir must not be the --sft-model folder"),
    ("missing field", "record 1: missing or empty rejected"),
    ("all equal", "no usable pair to train on (2 dropped: chosen equals rejected)"),
    ("no file", "pairs file ./nope.jsonl does not exist"),
])
def test_bad_input_exits_2_with_what_and_how_to_fix(case, message, quick_run, tiny_gpt2_dir, pairs_jsonl, tmp_path,
                                                     monkeypatch, capsys):
    import train_dpo

    sft_dir, _ = quick_run
    pairs, sft, out = str(pairs_jsonl), str(sft_dir), str(tmp_path / "out")
    if case == "missing":
        sft = str(tmp_path / "nothing")
    elif case == "no template":
        sft = str(tiny_gpt2_dir)  # a base model: weights, but no chat template
    elif case == "same folder":
        out = sft
    elif case == "missing field":
        pairs = str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi?", "chosen": "Hello."}]))
    elif case == "all equal":
        pairs = str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi?", "chosen": "Same.", "rejected": "Same."}] * 4))
    elif case == "no file":
        pairs = "./nope.jsonl"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:  # in this process: the message and the exit code as a user sees them
        train_dpo.main(dpo_args(sft, out, "--pairs", pairs))
    stderr = capsys.readouterr().err
    assert stopped.value.code == 2 and message in stderr and "Traceback" not in stderr, stderr
    assert not (tmp_path / "out").exists() or case == "same folder"


def test_pairs_whose_prompt_fills_max_length_are_refused(quick_run, tmp_path, monkeypatch, capsys):
    """DPOTrainer leaves out a pair whose prompt alone fills --max-length: with none left, the run says why."""
    import train_dpo

    pairs = write_jsonl(tmp_path / "long.jsonl", [{"prompt": f"Question {i}: " + "why " * 40, "chosen": "Because.",
                                                   "rejected": "No."} for i in range(40)])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        train_dpo.main(dpo_args(quick_run[0], tmp_path / "out", "--pairs", str(pairs), "--max-length", "16"))
    stderr = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in stderr, stderr
    assert "every pair's prompt is at least --max-length 16 tokens long, so DPO has no answer" in stderr, stderr
    assert not (tmp_path / "out").exists()


# --- interruption and resume ---------------------------------------------------------------------
def test_killed_dpo_run_resumes_to_the_same_weights(quick_run, pairs_jsonl, tmp_path):
    from safetensors.torch import load_file

    sft_dir, _ = quick_run

    def args(out_dir):
        return dpo_args(sft_dir, out_dir, "--pairs", str(pairs_jsonl), "--learning-rate", "1e-3", "--max-steps", "8",
                        "--save-steps", "3")

    straight = run_script("train_dpo.py", *args(tmp_path / "straight"), cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    out_dir = tmp_path / "out"
    # killed once checkpoint-6 is saved, before step 7 (6 steps of 4 of 24 pairs: the second pass had begun)
    kill_when_paused(start_script("train_dpo.py", *args(out_dir), cwd=tmp_path, pause="checkpoint=6"), 6)
    checkpoint = tmp_path / "out-checkpoints" / "checkpoint-6"
    assert (checkpoint / "trainer_state.json").is_file() and not out_dir.exists()
    resumed = run_script("train_dpo.py", *args(out_dir), cwd=tmp_path)
    assert resumed.returncode == 0 and "Resuming from" in resumed.stdout, resumed.stderr[-2000:]
    assert json.loads((out_dir / METADATA_FILE).read_text())["results"]["resumed_from_step"] == 6
    sft, straight, resumed = (load_file(folder / "model.safetensors") for folder in (sft_dir, tmp_path / "straight",
                                                                                       out_dir))
    moved = max((straight[name] - sft[name]).abs().max().item() for name in straight)
    apart = max((straight[name] - resumed[name]).abs().max().item() for name in straight)
    assert apart < 1e-6 and moved > 1e-3, (apart, moved)


def test_ctrl_c_stops_dpo_with_a_checkpoint(quick_run, pairs_jsonl, tmp_path):
    sft_dir, _ = quick_run
    args = dpo_args(sft_dir, tmp_path / "out", "--pairs", str(pairs_jsonl), "--max-steps", "100000", "--save-steps",
                    "1000", "--logging-steps", "1000")
    process = start_script("train_dpo.py", *args, cwd=tmp_path, pause="ctrl-c=2")  # Ctrl-C as step 3 begins
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    checkpoint = tmp_path / "out-checkpoints" / "checkpoint-3"  # step 3 finished, then saved, though --save-steps 1000
    assert f"Interrupted at step 3/100000; checkpoint saved in {checkpoint}" in stderr  # resumed: the test above
    assert not (tmp_path / "out").exists() and (checkpoint / "trainer_state.json").is_file()


def test_lora_dpo_trains_adapters_against_the_model_with_them_switched_off(quick_run, pairs_jsonl, tmp_path):
    sft_dir, _ = quick_run
    result = run_script("train_dpo.py", *dpo_args(sft_dir, tmp_path / "out", "--pairs", str(pairs_jsonl), "--lora",
                                                   "--max-steps", "2"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "learning rate 5e-05 (LORA_LEARNING_RATE)" in result.stdout
    record = json.loads((tmp_path / "out" / METADATA_FILE).read_text())
    assert record["lora"]["rank"] == 16 and (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()
    assert abs(record["results"]["eval_loss_before"] - 0.6931) < 1e-3  # adapters at zero: the model is the reference


def test_ultrafeedback_by_its_hub_name_from_the_local_cache(quick_run, tmp_path):
    """The default pairs, HuggingFaceH4/ultrafeedback_binarized (train_prefs), with its real columns, read from a
    local Hugging Face cache as after an earlier download (HF_HUB_OFFLINE=1): no kit banner, no self-generation."""
    from test_hub_path import hub_dataset_cache

    sft_dir, _ = quick_run

    def rows(split):
        out = []
        for i in range(40):
            question, answer = QA[i % len(QA)]
            user = {"role": "user", "content": f"[{split}] {question} ({i})"}
            chosen, rejected = [user, {"role": "assistant", "content": answer}], [user, {"role": "assistant",
                                                                                        "content": "Maybe."}]
            out.append({"prompt": user["content"], "prompt_id": f"{split}-{i}", "chosen": chosen, "rejected": rejected,
                        "messages": chosen, "score_chosen": 8.0, "score_rejected": 3.0})
        return out

    home = tmp_path / "hf-home"
    hub_dataset_cache(home, "HuggingFaceH4/ultrafeedback_binarized",
                      {split: rows(split) for split in ("train_prefs", "test_prefs")}, tmp_path)
    result = run_script("train_dpo.py", "--sft-model", str(sft_dir), "--output-dir", str(tmp_path / "out"),
                        "--max-steps", "1", "--num-pairs", "8", "--eval-pairs", "4", cwd=tmp_path,
                        env={"HF_HOME": str(home)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "OFFLINE" not in result.stdout
    assert "Pairs: HuggingFaceH4/ultrafeedback_binarized [from hub]: 8 to train on, 4 held out" in result.stdout
    record = json.loads((tmp_path / "out" / METADATA_FILE).read_text())
    assert (record["data"]["source"], record["data"]["split"]) == ("hub", "train_prefs")
