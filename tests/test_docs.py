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
