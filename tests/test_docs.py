"""The docs cannot drift from the code: every command names a script and flags that exist, every relative
link and anchor resolves, the README's recipe is the script's own text, and the module tree is complete."""

import ast
import importlib.util
import re
import shlex
from functools import cache
from pathlib import Path

import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
TRAINING_SCRIPTS = {"train_chatbot.py", "quick_test.py", "demo_train.py"}  # quick and demo take train_chatbot's flags


@cache
def flags_of(script: str) -> set[str]:
    """The flags a script accepts, read from its source: its constants (train scripts) or add_argument calls."""
    from sft import settings

    source = ROOT / ("train_chatbot.py" if script in TRAINING_SCRIPTS else script)
    tree = ast.parse(source.read_text())
    flags = {"--help"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            flags |= {arg.value for arg in node.args if isinstance(arg, ast.Constant) and str(arg.value).startswith("-")}
    if "settings.parse(" in source.read_text():  # one flag per constant, --no-X for the booleans
        spec = importlib.util.spec_from_file_location(source.stem, source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name, value in settings.constants(vars(module)).items():
            flag = "--" + name.lower().replace("_", "-")
            flags |= {flag, "--no-" + flag[2:]} if isinstance(value, bool) else {flag}
    return flags


def commands(text: str) -> list[tuple[str, list[str]]]:
    """(script, its flags) for each `python SCRIPT ...` or `accelerate launch ... SCRIPT ...` shown as code:
    in shell blocks and in inline code."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    code = [body for language, body in blocks if language in ("", "bash", "sh")]
    code += re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE))
    found = []
    for line in "\n".join(code).splitlines():
        match = re.search(r"\b(?:python|launch)\b.*?\s((?:bench/|docs/)?[a-z_]+\.py)((?:\s+[^#\s]\S*)*)", line)
        if match:
            try:
                words = shlex.split(match.group(2))  # a quoted "with --compile" is a value, not a flag
            except ValueError:
                words = match.group(2).split()
            flags = [re.match(r"--?[\w-]*", word).group() for word in words if word.startswith("-")]
            found.append((match.group(1), flags))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_command_names_a_script_and_flags_that_exist(page):
    shown = commands(page.read_text())
    for script, flags in shown:
        assert (ROOT / script).is_file(), f"{page.name}: no script {script}"
        unknown = [flag for flag in flags if flag not in flags_of(script)]
        assert not unknown, f"{page.name}: {script} has no flag {', '.join(unknown)}"
    if page.name == "README.md":
        assert {"quick_test.py", "test_chatbot.py", "train_chatbot.py"} <= {script for script, _ in shown}


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings (lower case, punctuation dropped, spaces to dashes), and <a id>."""
    text = page.read_text()
    heads = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text, flags=re.DOTALL), re.MULTILINE)
    made = {re.sub(r"[^\w\- ]", "", head.strip().lower()).replace(" ", "-") for head in heads}
    return made | set(re.findall(r'<a id="([^"]+)"', text))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: broken link {target}"
        if anchor:
            assert anchor in anchors(linked), f"{page.name}: {target}: no heading #{anchor} in {linked.name}"


def test_the_anchor_rule_is_githubs():
    page = ROOT / "docs" / "dpo.md"
    assert {"your-own-pairs", "preference-tuning-with-train_dpopy-dpo"} <= anchors(page)


def test_the_readme_is_short_and_opens_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    blocks = [line for line in lines[:30] if line.startswith("pip install")]
    assert blocks == ["pip install -r requirements.txt && python quick_test.py",
                      "pip install -r requirements-dev.txt && python -m pytest"]


@pytest.mark.parametrize("page", ["README.md", "docs/how-sft-works.md"])
def test_the_recipe_shown_is_the_scripts_own_text(page):
    text = (ROOT / page).read_text()
    recipe = text[text.index("    with Run(s) as run:"):]
    recipe = recipe[:recipe.index("```")]
    script = (ROOT / "train_chatbot.py").read_text().splitlines()
    shown = [line for line in recipe.splitlines() if line.strip() and line.strip() != "..."]
    assert len(shown) > 10 and [line for line in shown if line not in script] == []


def test_the_module_tree_lists_every_module_of_sft():
    text = (ROOT / "docs" / "how-sft-works.md").read_text()
    tree = text[text.index("```\nsft/"):]
    tree = tree[4:tree.index("```", 4)]
    listed, folder = set(), ""
    for line in tree.splitlines()[1:]:
        name = line.split()[0]
        if name.endswith("/"):
            folder = name
        else:
            listed.add(folder + name if line.startswith("    ") else name)  # a file in a folder is indented twice
    present = {p.relative_to(ROOT / "sft").as_posix() for p in (ROOT / "sft").rglob("*")
               if p.suffix in (".py", ".html") and p.name != "__init__.py"}
    assert listed == present


def test_the_flag_tables_are_what_the_scripts_say():
    spec = importlib.util.spec_from_file_location("flags", ROOT / "docs" / "flags.py")
    flags = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flags)
    text, made = flags.REFERENCE.read_text(), flags.tables()
    for script, table in made.items():
        assert f"<!-- flags: {script} -->\n{table}<!-- /flags -->" in text, f"run python docs/flags.py ({script})"
    assert "| `--api-key` |" in made["test_chatbot.py"] and "| `QUICK` |" in made["train_dpo.py"]


TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"
FAULTS, REFUSALS, DPO, EXPORT = (f"tests/test_{name}.py" for name in ("faults", "refusals", "dpo", "export"))
# Each message in docs/troubleshooting.md: (file, the test that makes the code print it, a piece of it the test checks)
PRODUCED_BY = {
    "OFFLINE: The Hub is unreachable ...":
        ("tests/test_offline_kit.py", "test_quick_test_falls_back_to_the_offline_kit_and_learns",
         "OFFLINE: The Hub is unreachable"),
    "could not load model 'NAME'":
        (FAULTS, "test_chatbot_corrupt_weights", "could not load model"),
    "... does not exist: check the path":
        (FAULTS, "test_missing_base_model_folder", "does not exist: check the path"),
    "... is empty":
        (FAULTS, "test_bad_data", "empty.jsonl is empty"),
    "unsupported file type":
        (FAULTS, "test_bad_data", "unsupported file type '.txt'"),
    "NAME: record N (... format): ...":
        (FAULTS, "test_bad_data", "bad.jsonl: record 0 ("),
    "columns [...] match no supported format":
        (FAULTS, "test_bad_data", "match no supported format"),
    "no conversation with an assistant answer":
        (FAULTS, "test_bad_data", "no conversation with an assistant answer"),
    "--num-train-samples must be at least 1":
        (FAULTS, "test_bad_settings", "--num-train-samples must be at least 1"),
    "--num-epochs must be above 0":
        (FAULTS, "test_bad_settings", "--num-epochs must be above 0"),
    "--learning-rate must be between 0 and 1":
        (FAULTS, "test_bad_settings", "--learning-rate must be between 0 and 1"),
    "--batch-size must be at least 1":
        (FAULTS, "test_bad_settings", "--batch-size must be at least 1"),
    "--gradient-accumulation-steps must be at least 1":
        (FAULTS, "test_bad_settings", "--gradient-accumulation-steps must be at least 1"),
    "--max-length N is longer than MODEL's context window":
        (FAULTS, "test_a_max_length_beyond_the_context_window_is_refused", "--max-length 1025 is longer than"),
    "no training conversation fits --max-length N":
        (FAULTS, "test_bad_settings", "no training conversation fits --max-length"),
    "another run (pid N, started HH:MM) is writing OUTPUT_DIR":
        (REFUSALS, "test_a_second_run_into_the_same_folder_is_refused_and_the_first_finishes", "another run (pid "),
    "not enough disk space for this run: it writes about X GB ...":
        (REFUSALS, "test_a_run_that_will_not_fit_on_the_disk_is_refused_before_training",
         "not enough disk space for this run: it writes about"),
    "this run needs about X GiB of memory at its peak and this machine has Y GiB available":
        (REFUSALS, "test_a_run_far_over_the_memory_is_refused_with_the_remedies",
         "GiB available: the system would kill it"),
    "holds a model trained with other settings":
        (FAULTS, "test_a_model_of_other_settings_is_replaced_only_with_overwrite",
         "holds a model trained with other settings (seed)"),
    "not a model folder written by these scripts":
        (FAULTS, "test_a_folder_not_written_by_us_is_never_replaced", "not a model folder written by these scripts"),
    "cannot write to ...":
        (FAULTS, "test_output_dir_in_a_read_only_folder", "cannot write to "),
    "it is a file, not a folder":
        (FAULTS, "test_output_dir_that_cannot_be_created", "it is a file, not a folder"),
    "could not save the model ... (is the disk full or the folder read-only?)":
        (FAULTS, "test_disk_full_when_saving_keeps_the_previous_model", "(is the disk full or the folder read-only?)"),
    "... The earlier model is intact in DIR: rename it back to OUTPUT_DIR":
        (FAULTS, "test_when_the_earlier_model_cannot_be_put_back_the_message_says_where_it_is",
         "The earlier model is intact in"),
    "could not write a checkpoint ... (is the disk full?)":
        (FAULTS, "test_disk_full_when_checkpointing_says_how_to_resume", "(is the disk full?)"),
    "out of memory on cuda ...":
        (FAULTS, "test_out_of_memory_names_the_remedies_with_the_current_values", "out of memory on"),
    "Interrupted at step N/M; checkpoint saved in ...":
        (FAULTS, "test_ctrl_c_saves_a_checkpoint_and_the_same_command_resumes", "Interrupted at step "),
    "holds checkpoints of an unfinished run with other settings":
        (FAULTS, "test_checkpoints_of_a_run_with_other_settings_are_kept_unless_overwrite",
         "holds checkpoints of an unfinished run with other settings (seed)"),
    "--limit must be between 1 and 541":
        ("tests/test_evaluation.py", "test_a_limit_out_of_range_is_refused", "--limit must be between 1 and 541"),
    "the IFEval evaluation needs the package ...":
        ("tests/test_evaluation.py", "test_eval_without_its_packages_says_how_to_install_them",
         "needs the package lm-eval"),
    "no fine-tuned model at DIR":
        (FAULTS, "test_chatbot_missing_or_broken_model_folder", "no fine-tuned model at"),
    "is not a complete model folder":
        (FAULTS, "test_chatbot_missing_or_broken_model_folder", "is not a complete model folder"),
    "this message is ... tokens long; with N kept for the answer ...":
        (FAULTS, "test_chatbot_prompt_longer_than_the_context_window", "tokens long; with 150 kept for the answer"),
    "prompt K is ...":
        (FAULTS, "test_chatbot_prompt_longer_than_the_context_window", "error: prompt 2 is "),
    "ChildFailedError":
        ("tests/test_distributed.py", "test_a_refused_run_under_the_launcher_says_why_above_its_childfailederror",
         "ChildFailedError"),
    "ships its own Python code, which runs only with --trust-remote-code":
        (FAULTS, "test_a_model_with_its_own_code_runs_only_with_trust_remote_code",
         "ships its own Python code, which runs only with --trust-remote-code"),
    "--qlora loads the base model in 4 bits with bitsandbytes, which needs an NVIDIA GPU":
        ("tests/test_lora.py", "test_qlora_without_a_gpu_says_why", "--qlora loads the base model in 4 bits"),
    "--lora-target-modules NAME: no such linear layer":
        ("tests/test_lora.py", "test_lora_on_a_layer_the_model_lacks_names_the_ones_it_has",
         "--lora-target-modules q_proj: no such linear layer"),
    "--compile: torch.compile failed on DEVICE: ...":
        (FAULTS, "test_compile_without_a_cpp_compiler_says_to_run_without_it",
         "--compile: torch.compile failed on cpu"),
    "--report-to X needs the X package":
        ("tests/test_training.py", "test_report_to_a_logger_that_is_not_installed",
         "--report-to wandb needs the wandb package"),
    "DIR has no chat template":
        (DPO, "test_bad_input_exits_2_with_what_and_how_to_fix", "has no chat template"),
    "--output-dir must not be the --sft-model folder":
        (DPO, "test_bad_input_exits_2_with_what_and_how_to_fix", "--output-dir must not be the --sft-model folder"),
    "PAIRS, record N: missing or empty rejected":
        (DPO, "test_bad_input_exits_2_with_what_and_how_to_fix", "record 1: missing or empty rejected"),
    "no usable pair to train on (N dropped: chosen equals rejected ...)":
        (DPO, "test_bad_input_exits_2_with_what_and_how_to_fix",
         "no usable pair to train on (2 dropped: chosen equals"),
    "every pair's prompt is at least --max-length N tokens long":
        (DPO, "test_pairs_whose_prompt_fills_max_length_are_refused",
         "every pair's prompt is at least --max-length 16"),
    "no prompts left: none of N chats took a form instruction":
        ("tests/test_grpo.py", "test_requests_that_all_overlap_ifeval_leave_no_prompts", "no prompts left"),
    "--num-generations must be at least 2":
        ("tests/test_grpo.py", "test_settings_that_cannot_make_groups_are_refused",
         "--num-generations must be at least 2"),
    "must be a multiple of --num-generations":
        ("tests/test_grpo.py", "test_settings_that_cannot_make_groups_are_refused",
         "must be a multiple of --num-generations"),
    "serving on HOST lets anyone who can reach this machine use the model: pass --api-key KEY":
        ("tests/test_web.py", "test_serving_on_every_interface_needs_an_api_key_and_warns",
         "serving on 0.0.0.0 lets anyone who can reach this machine use the model"),
    "cannot serve on HOST port N: Address already in use":
        ("tests/test_web_hardening.py", "test_a_port_another_program_holds_is_refused_saying_what_to_do",
         ": Address already in use"),
    "no model folder at DIR":
        (EXPORT, "test_a_folder_without_a_model_is_refused", "no model folder at"),
    "DIR has no model":
        (EXPORT, "test_a_folder_without_a_model_is_refused", "has no model"),
    "holds a LoRA adapter alone, not a model":
        (EXPORT, "test_an_adapter_alone_is_refused_saying_what_to_pass", "holds a LoRA adapter alone"),
    "has no chat template":
        (EXPORT, "test_a_folder_without_a_chat_template_is_refused", "has no chat template"),
    "comes with its own Python code (auto_map in its config)":
        (EXPORT, "test_a_folder_with_its_own_code_is_not_exported",
         "comes with its own Python code (auto_map in its config)"),
    "architecture, NAME, is not one llama.cpp's converter ... writes as GGUF":
        (EXPORT, "test_an_unknown_architecture_is_refused", "is not one llama.cpp's converter"),
    "FILE already exists: pass --overwrite":
        (EXPORT, "test_an_existing_gguf_is_named_and_kept", "already exists: pass --overwrite"),
    "could not download llama.cpp's converter from PyPI":
        (EXPORT, "test_without_internet_the_converters_download_says_what_to_do",
         "could not download llama.cpp's converter from PyPI"),
    "is not PyPI's llama_cpp_python-0.3.36.tar.gz (its sha256 differs)":
        (EXPORT, "test_a_source_archive_that_is_not_the_pinned_one_is_refused", "its sha256 differs"),
    "llama.cpp's converter could not convert DIR":
        (EXPORT, "test_a_failed_conversion_leaves_no_gguf", "llama.cpp's converter could not convert"),
    "--type q4_k_m uses llama.cpp's quantizer, which comes with llama-cpp-python":
        (EXPORT, "test_q4_k_m_without_llama_cpp_says_how_to_install_it",
         "--type q4_k_m uses llama.cpp's quantizer, which comes with llama-cpp-python"),
    "could not write FILE (is the disk full or the folder read-only?)":
        (EXPORT, "test_a_write_that_fails_leaves_nothing_and_says_why", "(is the disk full or the folder read-only?)"),
}


def troubleshooting_messages() -> list[str]:
    """The code spans of the first column of docs/troubleshooting.md's table; spans in parentheses say where a
    message comes from or name its variants, and rows without a span are advice."""
    messages = []
    for first in re.findall(r"^\| (.*?) \|", TROUBLESHOOTING.read_text(), re.MULTILINE):
        outside = re.sub(r"(`[^`]*`)|\((?:[^()`]|`[^`]*`)*\)", lambda match: match[1] or "", first)
        messages += re.findall(r"`([^`]+)`", outside)
    return messages


def function_source(path: str, name: str) -> str | None:
    """The source of the top-level function `name` in `path`, decorators (parametrize's cases) included."""
    if not (ROOT / path).is_file():
        return None
    text = (ROOT / path).read_text()
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return "\n".join(ast.get_source_segment(text, part) for part in [*node.decorator_list, node])
    return None


def test_every_troubleshooting_message_is_produced_by_a_test():
    """Each message in the troubleshooting table has a test that runs the code printing it and checks a piece of
    it (PRODUCED_BY): a message without one, or an entry whose message, test or piece is gone, fails."""
    messages = troubleshooting_messages()
    problems = [f"no test for {message!r}: add one to PRODUCED_BY" for message in messages
                if message not in PRODUCED_BY]
    problems += [f"{message!r} is no longer in the table" for message in PRODUCED_BY if message not in messages]
    for message, (path, name, piece) in PRODUCED_BY.items():
        source = function_source(path, name)
        if source is None:
            problems.append(f"{message!r}: no function {name} in {path}")
        elif len(piece) < 12 or piece not in source:
            problems.append(f"{message!r}: {path}::{name} does not check {piece!r}")
    assert not problems, "\n".join(problems)
