"""Evaluation: IFEval scored offline by Google's rules, the report card, and answers during training."""

import json

import pytest
import torch
from conftest import run_script

from sft.eval import compare, ifeval


def item(instruction: str, **kwargs) -> dict:
    return {"key": 1, "prompt": "A request.", "instruction_id_list": [instruction], "kwargs": [kwargs]}


@pytest.mark.parametrize("instruction, kwargs, followed, broken", [
    ("punctuation:no_comma", {}, "Paris is the capital of France.", "Paris, the capital, is in France."),
    ("change_case:english_lowercase", {}, "all of this is lower case.", "This is Not."),
    ("detectable_format:json_format", {}, '{"nickname": "Staff"}', "Staff is a fine nickname."),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 5}, "one two three four five six",
     "one two"),
    # Punkt knows "Dr." and "p.m." are abbreviations: two sentences here, not five (a split on every period)
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3},
     "Dr. Smith arrived at 5 p.m. yesterday. He left early.", "One. Two. Three. Four."),
])
def test_scores_agree_with_googles_rules_on_hand_made_answers(instruction, kwargs, followed, broken):
    rules = ifeval.checker()
    items = [item(instruction, **kwargs)] * 2
    summary = ifeval.score(items, [followed, broken])
    assert summary["followed_strict"] == [True, False]
    assert summary["prompt_level_strict"] == summary["instruction_level_strict"] == 0.5
    for answer, expected in ((followed, True), (broken, False)):  # the checker itself, called directly
        example = rules.InputExample(key=1, instruction_id_list=[instruction], prompt="A request.", kwargs=[kwargs])
        assert rules.test_instruction_following_strict(example, answer).follow_all_instructions is expected
    assert summary["by_instruction"] == {instruction: {"followed": 1, "of": 2}}


def test_prompt_level_needs_every_instruction_and_loose_forgives_a_first_line():
    """Two instructions per prompt: prompt level counts prompts with all followed, instruction level each one;
    loose also scores the answer without its first line (IFEval's paper)."""
    two = {"key": 2, "prompt": "A request.", "instruction_id_list": ["punctuation:no_comma",
                                                                     "change_case:english_lowercase"],
           "kwargs": [{}, {}]}
    answers = ["all lower case and no comma.", "all lower, but a comma.", "Sure:\nall lower and no comma."]
    summary = ifeval.score([two] * 3, answers)
    assert summary["followed_strict"] == [True, False, False]
    assert summary["prompt_level_strict"] == pytest.approx(1 / 3)
    assert summary["instruction_level_strict"] == pytest.approx(4 / 6)  # 2 + 1 (lower) + 1 (no comma)
    assert summary["prompt_level_loose"] == pytest.approx(2 / 3)  # the third without "Sure:" passes both
    assert summary["instruction_level_loose"] == pytest.approx(5 / 6)
    assert summary["by_instruction"] == {"change_case:english_lowercase": {"followed": 2, "of": 3},
                                         "punctuation:no_comma": {"followed": 2, "of": 3}}


def test_the_same_answers_score_the_same_every_time(monkeypatch):
    """langdetect, which the case and language checks call, is random unless seeded: unseeded, this mixed-language
    answer is English about one time in eight, so 40 scorings of it would disagree."""
    from langdetect import DetectorFactory

    monkeypatch.setattr(DetectorFactory, "seed", None)  # as in a fresh process
    answer = "hello bonjour hola ciao"
    summary = ifeval.score([item("change_case:english_lowercase")] * 40, [answer] * 40)
    assert summary["by_instruction"]["change_case:english_lowercase"]["followed"] in (0, 40)
    assert ifeval.score([item("change_case:english_lowercase")] * 40, [answer] * 40) == summary


def test_taught_and_not_taught_types_are_scored_apart_and_shown_in_the_report_card():
    from sft.data.constraints import HELD_OUT
    from sft.eval import evaluate, report_card

    taught, not_taught = "punctuation:no_comma", HELD_OUT[0]
    score = evaluate.by_group({"by_instruction": {taught: {"followed": 3, "of": 4},
                                                  not_taught: {"followed": 1, "of": 5}}})
    assert (score["instruction_level_taught"], score["instruction_level_not_taught"]) == (0.75, 0.2)
    results = {"fine-tuned": {"ifeval": {**score, "prompt_level_strict": 0.5, "prompt_level_loose": 0.5,
                                         "instruction_level_strict": 0.4, "instruction_level_loose": 0.4,
                                         "followed_strict": []}}}
    card = "\n".join(report_card.per_instruction(results))
    assert "| fine-tuned | 75.0% | 20.0% |" in card
    assert f"| `{taught}` (taught) | 3/4 |" in card and f"| `{not_taught}` | 1/5 |" in card


def test_the_sentence_splitter_is_nltks_punkt_with_its_english_parameters():
    import nltk

    ifeval.prepare_sentence_splitter()
    tokenizer = nltk.data.load("nltk:tokenizers/punkt/english.pickle")  # what the checker loads: no download
    assert tokenizer.tokenize("Mr. Brown met Dr. Smith at 5 p.m. on Jan. 3. They talked.") == [
        "Mr. Brown met Dr. Smith at 5 p.m. on Jan. 3.", "They talked."]
    assert {"dr", "mr", "p.m", "jan"} <= tokenizer._params.abbrev_types


def test_the_prompts_and_the_subset_are_fixed():
    every = ifeval.prompts()
    assert len(every) == ifeval.NUM_PROMPTS == 541 and every[0]["key"] == 1000
    subset = ifeval.prompts(61)
    assert len(subset) == 61 and subset == [every[i * 541 // 61] for i in range(61)] == ifeval.prompts(61)
    assert [p["key"] for p in subset[:4]] == [every[0]["key"], every[8]["key"], every[17]["key"], every[26]["key"]]
    assert ifeval.prompts(541) == every


def test_eval_writes_a_report_card_that_holds_the_numbers_it_printed(quick_run):
    out_dir, _ = quick_run
    result = run_script("test_chatbot.py", "--mode", "eval", "--model", str(out_dir), "--limit", "6",
                        "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    first_table = result.stdout.split("IFEval's instruction types")[0]  # then the taught / not taught table
    rows = [line for line in first_table.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    names = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    assert names == ["base", "base, cut at its first role line", "fine-tuned"]
    report = json.loads((out_dir / "report.json").read_text())
    card = (out_dir / "report.md").read_text()
    assert all(row in card for row in rows) and (out_dir / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert report["prompts"] == 6 and report["sentence_splitter"] == ifeval.SENTENCE_SPLITTER
    for name, row in zip(names, rows):
        model = report["models"][name]
        cells = row.strip("| ").split(" | ")
        assert cells[1] == (f"{model['ifeval']['prompt_level_strict']:.1%} "
                            f"({model['ifeval']['prompt_level_loose']:.1%})")
        assert cells[2] == (f"{model['ifeval']['instruction_level_strict']:.1%} "
                            f"({model['ifeval']['instruction_level_loose']:.1%})")
        if "held_out_loss" in model and model["held_out_loss"] is not None:
            assert f"{model['held_out_loss']:.3f}" in row
    tuned = report["models"]["fine-tuned"]
    assert len(tuned["answers"]) == 6 and tuned["behaviour"]["mean_answer_tokens"] <= 8
    # the example answers carry their own verdicts, and the cut row scores the base's cut answers
    for answer in tuned["answers"][:3]:
        verdict = "followed" if answer["ifeval_followed"] else "not followed"
        assert f"({answer['new_tokens']} tokens; {verdict})" in card
    items = ifeval.prompts(6)
    cut = [compare.cut_at_role(a["text"]) for a in report["models"]["base"]["answers"]]
    assert report["models"]["base, cut at its first role line"]["ifeval"]["followed_strict"] == (
        ifeval.score(items, cut)["followed_strict"])
    for kind, counts in tuned["ifeval"]["by_instruction"].items():  # one row per instruction type
        assert f"| `{kind}`" in card and f"{counts['followed']}/{counts['of']}" in card
    # the held-out loss is a true per-token mean over the whole split, close to the Trainer's batch-mean one
    metadata = json.loads((out_dir / "training_metadata.json").read_text())["results"]
    assert tuned["held_out_loss"] == pytest.approx(metadata["eval_loss"], rel=0.02)
    assert report["models"]["base"]["held_out_loss"] == pytest.approx(metadata["eval_loss_before"], rel=0.02)
    assert "report.md" in (out_dir / "README.md").read_text()  # the model card links to it


@pytest.mark.parametrize("limit", ["0", "542"])
def test_a_limit_out_of_range_is_refused(quick_run, limit):
    from test_faults import assert_clean_failure

    result = run_script("test_chatbot.py", "--mode", "eval", "--model", str(quick_run[0]), "--limit", limit)
    assert_clean_failure(result, "--limit must be between 1 and 541")


def test_eval_of_a_missing_folder_is_refused(tmp_path):
    from test_faults import assert_clean_failure

    result = run_script("test_chatbot.py", "--mode", "eval", "--model", str(tmp_path / "none"), "--limit", "2")
    assert_clean_failure(result, "no fine-tuned model at")


def test_eval_without_its_packages_says_how_to_install_them(monkeypatch):
    import importlib.util

    from sft.errors import UserError

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else find_spec(name, *a))
    with pytest.raises(UserError, match="needs the package lm-eval: pip install -r requirements.txt"):
        ifeval.prompts(5)


def test_answers_appear_under_each_evaluation_while_training(quick_run):
    _, result = quick_run
    evaluations = result.stdout.count("eval  | step")
    assert evaluations == 2 and result.stdout.count("  What is the capital of France?  ->  ") == evaluations


def test_the_base_models_answers_are_generated_once_per_base_prompts_and_decoding(chat_model_dir, capsys):
    from sft import generation, models
    from sft.eval import evaluate

    model, tokenizer = generation.load_for_generation(models.finetuned_source(str(chat_model_dir)))
    prompts = ["What is the capital of France?", "Name a colour."]
    decoding = generation.Decoding(max_new_tokens=4)
    first, _ = evaluate.kept_answers(model, tokenizer, prompts, decoding, "base")
    assert "were kept" not in capsys.readouterr().out
    again, _ = evaluate.kept_answers(model, tokenizer, prompts, decoding, "base")
    assert "were kept from an earlier evaluation" in capsys.readouterr().out and again == first
    longer, _ = evaluate.kept_answers(model, tokenizer, prompts, generation.Decoding(max_new_tokens=6), "base")
    assert "were kept" not in capsys.readouterr().out and max(a.new_tokens for a in longer) == 6
    with torch.no_grad():  # other weights: another base
        next(model.parameters()).add_(0.5)
    evaluate.kept_answers(model, tokenizer, prompts, decoding, "base")
    assert "were kept" not in capsys.readouterr().out


def test_each_models_answers_are_generated_once_whatever_it_is_called(chat_model_dir, capsys):
    """The SFT model's answers, written when it was evaluated against its base, are not written again when
    a DPO model trained from it is evaluated against it."""
    from sft import generation, models
    from sft.eval import evaluate

    def model(shift):  # the same architecture, other weights: another model
        loaded, tokenizer = generation.load_for_generation(models.finetuned_source(str(chat_model_dir)))
        with torch.no_grad():
            next(loaded.parameters()).add_(shift)
        return loaded, tokenizer

    (base, tokenizer), (sft, _), (dpo, _) = model(0.5), model(0.0), model(-0.5)
    items = [{**item("punctuation:no_comma"), "prompt": f"Count to {n} without commas."} for n in ("three", "four")]
    decoding = generation.Decoding(max_new_tokens=5)
    evaluate.evaluate({"base": base, "fine-tuned": sft}, tokenizer, items, decoding, None, 64)
    assert "were kept" not in capsys.readouterr().out
    evaluate.evaluate({"SFT": sft, "DPO": dpo}, tokenizer, items, decoding, None, 64)
    printed = capsys.readouterr().out
    assert printed.count("were kept from an earlier evaluation") == 1 and "The SFT model's answers" in printed
    evaluate.evaluate({"SFT": sft, "DPO": dpo}, tokenizer, items, decoding, None, 64)
    assert capsys.readouterr().out.count("were kept from an earlier evaluation") == 2


def test_the_cut_row_scores_the_bases_answers_cut_at_their_first_role_line(chat_model_dir):
    """The base's kept answers are rewritten in the cache, so that the cut changes what is followed: a tiny
    model's few tokens rarely hold a role line of their own."""
    from sft import generation, models
    from sft.eval import evaluate
    from sft.offline_kit import cache_dir

    model, tokenizer = generation.load_for_generation(models.finetuned_source(str(chat_model_dir)))
    items = [{**item("punctuation:no_comma"), "prompt": f"Say it without a comma, {n}."} for n in ("one", "two")]
    decoding = generation.Decoding(max_new_tokens=3)
    before = set((cache_dir() / "answers").glob("*.json"))
    evaluate.kept_answers(model, tokenizer, [i["prompt"] for i in items], decoding, "base")
    [path] = set((cache_dir() / "answers").glob("*.json")) - before
    kept = json.loads(path.read_text())
    for answer, text in zip(kept["answers"], ["No comma here.\nUser: one, two", "One, two."]):
        answer["text"] = text
    path.write_text(json.dumps(kept))
    results = evaluate.evaluate({"base": model, "fine-tuned": model}, tokenizer, items, decoding, None, 64)
    assert results["base"]["ifeval"]["followed_strict"] == [False, False]
    assert results[evaluate.CUT_BASE]["ifeval"]["followed_strict"] == [True, False]
