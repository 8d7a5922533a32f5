"""How many of a model's IFEval answers ask for more instead of answering, read from its report card.

    python bench/asks_back.py ./chatbot-demo ./chatbot-test

"Asks back" is an answer that the kit's data filter would drop (sft/data/kit.py's NOT_AN_ANSWER: "Please
provide the text...", "I'm sorry, but..."). A clean stop says only that the answer ended; one that asks back
ended without doing anything. For each model folder with a report.json (written by test_chatbot.py --mode
eval), prints one row per model in it: clean stops, answers asking back, and clean stops that answer.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sft.data.kit import NOT_AN_ANSWER  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="model folders evaluated by test_chatbot.py --mode eval")
    args = parser.parse_args()
    missing = [folder for folder in args.folders if not (Path(folder) / "report.json").is_file()]
    if missing:
        sys.exit(f"no report.json in {', '.join(missing)}: run python test_chatbot.py --mode eval --model FOLDER first")
    print("| folder | model | answers | clean stop | asks back | clean stops that answer |\n|---|---|---|---|---|---|")
    for folder in args.folders:
        report = json.loads((Path(folder) / "report.json").read_text(encoding="utf-8"))
        for name, result in report["models"].items():
            answers = result.get("answers") or []
            if not answers:  # the base cut at its first role line has scores, not answers
                continue
            asks = [bool(NOT_AN_ANSWER.search(a["text"])) for a in answers]
            clean = [a["clean_stop"] for a in answers]
            print(f"| {folder} | {name} | {len(answers)} | {sum(clean)} | {sum(asks)} | "
                  f"{sum(c and not q for c, q in zip(clean, asks))} |")


if __name__ == "__main__":
    main()
