"""train_grpo.py: the rewards on hand-made answers, prompts that never overlap IFEval, a real GRPO run on the tiny
SFT model (its folder loads, its metadata chains base -> SFT -> GRPO, compare puts it beside its SFT model),
and bad input."""

import importlib.util
import json

import pytest
from conftest import ROOT, run_script, write_jsonl

from sft.data import constraints, kit
from sft.eval import evaluate, ifeval
from sft.train.metadata import METADATA_FILE


def grpo_script():
    spec = importlib.util.spec_from_file_location("script_train_grpo", ROOT / "train_grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grpo_args(sft_dir, out_dir, *extra):
    """Two optimizer steps of GRPO on the tiny SFT model, on the kit's requests: 2 prompts x 2 answers each."""
    return ["--sft-model", str(sft_dir), "--output-dir", str(out_dir), "--max-steps", "2", "--logging-steps", "1",
            "--num-prompts", "8", "--eval-prompts", "4", "--num-generations", "2", "--batch-size", "4",
            "--gradient-accumulation-steps", "1", "--max-completion-length", "12", "--learning-rate", "1e-3",
            "--offline", *extra]


@pytest.fixture(scope="session")
def grpo_run(quick_run, tmp_path_factory):
    sft_dir, _ = quick_run
    out_dir = tmp_path_factory.mktemp("grpo") / "chatbot-grpo"
    result = run_script("train_grpo.py", *grpo_args(sft_dir, out_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out_dir, result


# --- the rewards ---------------------------------------------------------------------------------
def answer(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_the_instruction_reward_is_its_checker_on_hand_made_answers():
    script = grpo_script()
    cases = [("change_case:english_lowercase", {}, "paris is the capital of france.", 1.0),
             ("change_case:english_lowercase", {}, "Paris is the capital of France.", 0.0),
             ("punctuation:no_comma", {}, "Red and blue are colours.", 1.0),
             ("punctuation:no_comma", {}, "Red, blue and green.", 0.0),
             ("detectable_format:json_format", {}, '{"capital": "Paris"}', 1.0),
             ("detectable_format:json_format", {}, "The capital is Paris.", 0.0)]
    rewards = script.follows_the_instruction([answer(text) for _, _, text, _ in cases],
                                             [name for name, *_ in cases], [json.dumps(f) for _, f, _, _ in cases])
    assert rewards == [expected for *_, expected in cases]


def test_the_clean_stop_reward_wants_end_of_text_and_no_role_line():
    script = grpo_script()
    eos = 50256
    rewards = script.stops_cleanly([answer("Paris."), answer("Paris, and"), answer("Paris.\nUser: and Rome?")],
                                   [[1, 2, eos], [1, 2, 3], [1, 2, 3, eos]], eos_token_id=eos)
    assert rewards == [1.0, 0.0, 0.0]


def test_prompts_are_kit_requests_with_an_instruction_and_never_overlap_ifeval():
    script = grpo_script()
    train, test = kit.sharegpt_exchanges()
    made = script.prompts(train[:200], 100, seed=0)
    assert len(made) >= 50 and {m.ifeval_id for m in made} <= set(constraints.TRAINED)
    ifeval_runs = set().union(*(kit.word_runs(p["prompt"]) for p in ifeval.prompts()))
    for m in made:
        request = m.chat[-2]["content"]
        assert not kit.word_runs(request) & ifeval_runs, request
    originals = {c[-2]["content"] for c in train[:200]}
    assert not {m.chat[-2]["content"] for m in made} & originals  # each request carries its instruction
    assert not originals & {c[-2]["content"] for c in test}  # the held-out requests are other requests


# --- a real run ----------------------------------------------------------------------------------
def test_a_tiny_grpo_run_writes_a_loadable_folder_chained_to_its_sft_model(grpo_run, quick_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir, result = grpo_run
    sft_dir, _ = quick_run
    log = result.stdout
    assert "Training: 2 optimizer steps of 4 answers (2 per prompt; 4 x 1 accumulated)" in log
    step_lines = [line for line in log.splitlines() if line.startswith("step ")]
    assert len(step_lines) == 2 and all(" | reward " in line and " | followed " in line and " | KL " in line
                                        for line in step_lines), step_lines
    assert "Before: form instructions followed" in log and "After:  form instructions followed" in log
    AutoModelForCausalLM.from_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(sft_dir).chat_template
    record = json.loads((out_dir / METADATA_FILE).read_text())
    assert record["stage"] == "grpo" and record["base_model_path"] == str(sft_dir.resolve())
    assert record["sft_model"]["stage"] == "sft" and record["dataset"] == kit.SHAREGPT
    # eval takes the held-out chats, and the length they were cut to, from the SFT run behind it
    assert evaluate.sft_run(record) == json.loads((sft_dir / METADATA_FILE).read_text())
    results = record["results"]
    assert results["optimizer_steps"] == 2 and record["data"]["num_eval_samples"] == 4
    for key in ("held_out_followed_before", "held_out_followed", "final_train_reward"):
        assert 0 <= results[key] <= 1.2, (key, results[key])
    assert sum(record["data"]["instructions"].values()) == record["num_samples"]
    assert "Held-out requests, form instructions followed:" in log and "(SFT) ->" in log


def test_compare_and_eval_put_the_grpo_model_beside_the_model_it_came_from(grpo_run, quick_run):
    out_dir, _ = grpo_run
    sft_dir, _ = quick_run
    compared = run_script("test_chatbot.py", "--mode", "compare", "--model", str(out_dir), "--max-new-tokens", "6")
    assert compared.returncode == 0, compared.stdout[-2000:] + compared.stderr[-2000:]
    assert "| SFT |" in compared.stdout and "| GRPO |" in compared.stdout and "| base |" not in compared.stdout
    report = json.loads((out_dir / "compare_report.json").read_text())
    assert report["models"] == {"SFT": str(sft_dir), "GRPO": str(out_dir)}
    evaluated = run_script("test_chatbot.py", "--mode", "eval", "--model", str(out_dir), "--limit", "3",
                           "--max-new-tokens", "6")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    rows = [line for line in evaluated.stdout.splitlines() if line.startswith(("| SFT |", "| GRPO |"))]
    assert len(rows) >= 2 and all(row.split("|")[-2].strip() not in ("", "–") for row in rows[:2]), rows
    assert "Trained with GRPO from" in (out_dir / "report.md").read_text()


# --- bad input -----------------------------------------------------------------------------------
def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    result = run_script("train_grpo.py", *grpo_args(tmp_path / "notes", tmp_path / "out"))
    assert result.returncode == 2
    assert "is not a complete model folder" in result.stderr and "Traceback" not in result.stderr


def test_requests_that_all_overlap_ifeval_leave_no_prompts(quick_run, tmp_path):
    sft_dir, _ = quick_run
    records = [{"messages": [{"role": "user", "content": p["prompt"]},
                             {"role": "assistant", "content": "This answer is a plain sentence. It has two."}]}
               for p in ifeval.prompts(60)]
    data = write_jsonl(tmp_path / "ifeval_chats.jsonl", records)
    result = run_script("train_grpo.py", *grpo_args(sft_dir, tmp_path / "out", "--dataset-name", str(data)))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "no prompts left" in result.stderr and "IFEval" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("flags, message", [
    (["--num-generations", "1"], "--num-generations must be at least 2"),
    (["--num-generations", "3"], "must be a multiple of --num-generations"),
])
def test_settings_that_cannot_make_groups_are_refused(quick_run, tmp_path, flags, message):
    sft_dir, _ = quick_run
    result = run_script("train_grpo.py", *grpo_args(sft_dir, tmp_path / "out", *flags))
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
