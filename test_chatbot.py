"""See what SFT changed: base and fine-tuned model side by side, or chat with the fine-tuned one.

    python test_chatbot.py --mode compare                      # ./chatbot-finetuned vs its base model
    python test_chatbot.py --mode compare --model ./chatbot-test
    python test_chatbot.py --mode compare --prompts my_prompts.txt --sample --temperature 0.8
    python test_chatbot.py --mode interactive --model ./chatbot-test
    python test_chatbot.py -p "What is the capital of France?"  # one answer, then exit

Compare mode writes compare_report.json and compare_report.md into the model folder.
"""

import argparse
from pathlib import Path

from sft import compare, models
from sft.chat import repl
from sft.chat_format import install_chat_template
from sft.errors import exit_on_user_error
from sft.generation import Decoding, answer_once, check_prompt_lengths, load_for_generation
from sft.metadata import read_metadata

MODEL_DIR = "./chatbot-finetuned"
BASE_MODEL = "gpt2"  # used only when there is no fine-tuned model yet
MAX_NEW_TOKENS = 150
TEMPERATURE = 0.7
TOP_P = 0.9
SEED = 42


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["compare", "interactive"], default="compare")
    parser.add_argument("--model", default=MODEL_DIR, help=f"fine-tuned model folder (default: {MODEL_DIR})")
    parser.add_argument("--base-model", default=BASE_MODEL,
                        help=f"base model to show when no fine-tuned model exists yet (default: {BASE_MODEL})")
    parser.add_argument("--prompts", help="file of prompts: one per line, or jsonl with a \"prompt\" field")
    parser.add_argument("-p", "--prompt", help="answer this one message with the fine-tuned model and exit")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="answer length limit")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="with --sample")
    parser.add_argument("--top-p", type=float, default=TOP_P, help="with --sample")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--cut-at-role", action="store_true",
                        help="cut answers at the first new User:/Assistant: line")
    parser.add_argument("--offline", action="store_true", help="never ask the Hub (use the offline kit)")
    return parser.parse_args(argv)


def run_compare(args, decoding):
    prompts = compare.read_prompts(args.prompts) if args.prompts else compare.DEFAULT_PROMPTS
    metadata = read_metadata(args.model)
    if metadata is None:  # the tutorial's "test without training": show the base model alone
        print(f"No fine-tuned model in {args.model}: showing the base model alone.\n"
              "Train one with: python quick_test.py (minutes) or python train_chatbot.py (full run).")
        base, tokenizer = load_for_generation(models.find_base_model(args.base_model, args.offline))
        install_chat_template(tokenizer)
        contenders = {"base": base}
    else:
        base_source = models.base_source_from_metadata(metadata)
        tuned, tokenizer = load_for_generation(models.finetuned_source(args.model))  # its chat template renders every prompt
        contenders = {"base": load_for_generation(base_source)[0], "fine-tuned": tuned}

    window = models.context_window(contenders["base"]) or 2048
    check_prompt_lengths(tokenizer, prompts, window, args.max_new_tokens)
    results, summaries = {}, {}
    for name, model in contenders.items():
        print(f"Generating with the {name} model ({len(prompts)} prompts)...", flush=True)
        results[name], speed = compare.generate_answers(model, tokenizer, prompts, decoding, args.cut_at_role)
        summaries[name] = compare.summarize(results[name], speed)
    compare.print_answers(results)
    print("\n" + "\n".join(compare.metrics_table(summaries)))
    if metadata is not None:
        compare.write_report(Path(args.model), {"base": base_source.requested, "fine-tuned": args.model},
                             decoding, results, summaries)
        print(f"\nReport written to {Path(args.model) / compare.REPORT_MD} and {compare.REPORT_JSON}.")


def run_chat(args, decoding):
    model, tokenizer = load_for_generation(models.finetuned_source(args.model))
    window = models.context_window(model) or 2048
    if args.prompt is not None:  # one answer, printed whole: for scripts
        print(answer_once(model, tokenizer, [{"role": "user", "content": args.prompt}], decoding, window,
                          write=lambda piece: None))
        return
    repl(model, tokenizer, decoding, window, args.model)


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    decoding = Decoding(max_new_tokens=args.max_new_tokens, sample=args.sample,
                                temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if args.prompt is not None or args.mode == "interactive":
        run_chat(args, decoding)
    else:
        run_compare(args, decoding)


if __name__ == "__main__":
    main()
