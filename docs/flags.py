"""Write the flag tables of docs/reference.md from the scripts themselves, so that they cannot drift.

    python docs/flags.py            # rewrite the tables between <!-- flags: SCRIPT --> and <!-- /flags -->
    python docs/flags.py --check    # exit 1 if a table is not what the scripts say (tests/test_docs.py)

train_chatbot.py, train_dpo.py, train_grpo.py and export_gguf.py: one row per constant (its flag, default and comment), with
what quick_test.py, demo_train.py and train_dpo.py --quick change; test_chatbot.py: its argparse flags.
"""

import argparse
import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference.md"
BLOCK = re.compile(r"(<!-- flags: (\S+) -->\n)(.*?)(<!-- /flags -->)", re.DOTALL)


def shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        return f"`{value}`" if value else ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def flag(name: str, value) -> str:
    option = "--" + name.lower().replace("_", "-")
    return f"`{option}` / `--no-{option[2:]}`" if isinstance(value, bool) else f"`{option}`"


def script(name: str):
    """A top-level script as a module, loaded from its file (a test module may already own its plain name)."""
    spec = importlib.util.spec_from_file_location(f"script_{name.removesuffix('.py')}", ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def constants_table(name: str, presets: dict[str, dict]) -> str:
    """The constants of a training script, with the values each preset changes."""
    from sft import settings

    module = script(name)
    constants, helps = settings.constants(vars(module)), settings.help_texts(ROOT / name)
    header = "| constant | flag | default | " + "".join(f"{name} | " for name in presets) + "meaning |"
    rows = [header, "|" + "---|" * (4 + len(presets))]
    for name, value in constants.items():
        changed = "".join(f"{shown(changes[name]) if name in changes else ''} | " for changes in presets.values())
        meaning = helps.get(name, "").replace("|", "\\|")
        rows.append(f"| `{name}` | {flag(name, value)} | {shown(value)} | {changed}{meaning} |")
    return "\n".join(rows) + "\n"


def parser_table(parser: argparse.ArgumentParser) -> str:
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        names = " ".join(f"`{option}`" for option in action.option_strings)
        default = "" if action.default in (None, False) else shown(action.default)
        choices = f" ({', '.join(action.choices)})" if action.choices else ""
        rows.append(f"| {names} | {default} | {(action.help or '').replace('|', chr(92) + '|')}{choices} |")
    return "\n".join(rows) + "\n"


def tables() -> dict[str, str]:
    sys.path.insert(0, str(ROOT))
    quick_test, demo_train, train_dpo, train_grpo, test_chatbot = (script(name) for name in (
        "quick_test.py", "demo_train.py", "train_dpo.py", "train_grpo.py", "test_chatbot.py"))

    def overrides(module):
        return {name: value for name, value in vars(module).items() if name.isupper()}

    return {
        "train_chatbot.py": constants_table("train_chatbot.py", {"quick_test.py": overrides(quick_test),
                                                                 "demo_train.py": overrides(demo_train)}),
        "train_dpo.py": constants_table("train_dpo.py", {"--quick": train_dpo.QUICK_RUN}),
        "train_grpo.py": constants_table("train_grpo.py", {"--quick": train_grpo.QUICK_RUN}),
        "test_chatbot.py": parser_table(test_chatbot.build_parser()),
        "export_gguf.py": constants_table("export_gguf.py", {}),
    }


def main():
    check = "--check" in sys.argv[1:]
    text, made = REFERENCE.read_text(), tables()
    new = BLOCK.sub(lambda m: m.group(1) + made[m.group(2)] + m.group(4), text)
    missing = set(made) - set(BLOCK.findall(text) and [m[1] for m in BLOCK.findall(text)])
    if missing:
        sys.exit(f"docs/reference.md has no table for {', '.join(sorted(missing))}")
    if check:
        sys.exit(0 if new == text else "docs/reference.md: the flag tables differ from the scripts; run "
                                        "python docs/flags.py")
    REFERENCE.write_text(new)


if __name__ == "__main__":
    main()
