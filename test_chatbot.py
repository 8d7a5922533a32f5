"""See what SFT changed: base and fine-tuned model side by side, measured; or chat with the fine-tuned one.

    python test_chatbot.py --mode compare                      # ./chatbot-finetuned vs its base model
    python test_chatbot.py --mode compare --model ./chatbot-test
    python test_chatbot.py --mode compare --model ./chatbot-dpo-test   # a DPO model vs the SFT model it came from
    python test_chatbot.py --mode compare --prompts my_prompts.txt --sample --temperature 0.8
    python test_chatbot.py --mode eval --model ./chatbot-test  # IFEval, behaviour and held-out loss: report card
    python test_chatbot.py --mode eval --limit 541             # all of IFEval's prompts (the default on a GPU)
    python test_chatbot.py --mode interactive --model ./chatbot-test
    python test_chatbot.py --mode web --model ./chatbot-test   # chat in the browser: http://127.0.0.1:8000
    python test_chatbot.py -p "What is the capital of France?"  # one answer, then exit

Compare mode writes compare_report.json and compare_report.md into the model folder; eval mode writes
the report card: report.md, report.json and report.png.
"""

import argparse
import os
import sys
from pathlib import Path

from sft import models
from sft.console import quiet_library_chatter
from sft.data.chat_format import install_chat_template
from sft.devices import PRECISIONS, pick_device
from sft.errors import exit_on_user_error
from sft.eval import compare, evaluate, ifeval, report_card
from sft.generation import (
    CHAT_DEFAULTS,
    Decoding,
    answer_once,
    chat_defaults,
    check_prompt_lengths,
    load_for_generation,
)
from sft.serve.chat import repl
from sft.train.metadata import read_metadata

MODEL_DIR = "./chatbot-finetuned"
BASE_MODEL = "gpt2"  # used only when there is no fine-tuned model yet
MAX_NEW_TOKENS = 150  # answer length limit in compare and chat; eval mode allows evaluate.MAX_NEW_TOKENS (256)
SEED = 42
BATCH_SIZE = 32  # prompts generated together in compare and eval (64 on a GPU); fewer if memory runs short


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["compare", "eval", "interactive", "web"], default="compare",
                        help="compare: base vs fine-tuned on a few prompts; eval: IFEval and the report card; "
                        "interactive: chat in the terminal; web: chat in the browser")
    parser.add_argument("--model", default=MODEL_DIR, help=f"fine-tuned model folder (default: {MODEL_DIR})")
    parser.add_argument("--base-model", default=BASE_MODEL,
                        help=f"base model to show when no fine-tuned model exists yet (default: {BASE_MODEL})")
    parser.add_argument("--prompts", help="file of prompts: one per line, or jsonl with a \"prompt\" field or a "
                        "conversation in \"messages\" (docs/second-turns.jsonl)")
    parser.add_argument("-p", "--prompt", help="answer this one message with the fine-tuned model and exit")
    parser.add_argument("--limit", type=int, help=f"eval: this many of IFEval's {ifeval.NUM_PROMPTS} prompts, a "
                        f"fixed, evenly spread subset (default: all on a GPU, {evaluate.CPU_PROMPTS} on a CPU)")
    parser.add_argument("--max-new-tokens", type=int, help=f"answer length limit (default: {MAX_NEW_TOKENS}; "
                        f"eval: {evaluate.MAX_NEW_TOKENS})")
    parser.add_argument("--sample", action="store_true", help="compare and eval: sample instead of greedy decoding "
                        "(chat samples as the model folder's generation_config.json says, unless --greedy)")
    parser.add_argument("--greedy", action="store_true", help="interactive, -p and web: greedy decoding instead "
                        "of the model's chat defaults")
    parser.add_argument("--temperature", type=float, help="when sampling (default: the model's, else "
                        f"{CHAT_DEFAULTS['temperature']})")
    parser.add_argument("--top-p", type=float, help=f"when sampling (default: the model's, else "
                        f"{CHAT_DEFAULTS['top_p']})")
    parser.add_argument("--repetition-penalty", type=float, help="above 1 makes repeating less likely (default: "
                        "the model's when chatting, else 1.0: none)")
    parser.add_argument("--seed", type=int, default=SEED, help="with --sample: the random seed")
    parser.add_argument("--batch-size", type=int, help=f"compare and eval: prompts generated together "
                        f"(default: {BATCH_SIZE}, 64 on a GPU)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="the weights' precision: auto "
                        "is bf16 where the device computes in it natively (recent GPUs and CPUs), else fp32")
    parser.add_argument("--cut-at-role", action="store_true",
                        help="compare: cut answers at the first new User:/Assistant: line")
    parser.add_argument("--offline", action="store_true", help="never ask the Hub (use the offline kit)")
    parser.add_argument("--host", default="127.0.0.1", help="web: the address to serve on (0.0.0.0: every network "
                        "interface, with --api-key)")
    parser.add_argument("--port", type=int, default=8000, help="web: the port (0: any free one)")
    parser.add_argument("--max-queued", type=int, default=4, help="web: requests that may wait for one model "
                        "while it answers another; more get 503 with Retry-After")
    parser.add_argument("--api-key", default=os.environ.get("SFT_API_KEY"), help="web: clients must send "
                        "'Authorization: Bearer KEY' (default: $SFT_API_KEY); required with a --host other than "
                        "127.0.0.1, localhost or ::1")
    return parser


def load_contenders(args):
    """(name -> model, the tokenizer whose chat template renders every prompt, the run's metadata or None)."""
    metadata = read_metadata(args.model)
    if metadata is None:  # the tutorial's "test without training": the base model alone
        print(f"No fine-tuned model in {args.model}: showing the base model alone.\n"
              "Train one with: python quick_test.py (minutes) or python train_chatbot.py (full run).")
        base, tokenizer = load_for_generation(models.find_base_model(args.base_model, args.offline), args.precision)
        install_chat_template(tokenizer)
        return {"base": base}, tokenizer, None
    tuned, tokenizer = load_for_generation(models.finetuned_source(args.model), args.precision)
    base, _ = load_for_generation(models.base_source_from_metadata(metadata), args.precision)  # DPO: its SFT model
    before, after = compare.contender_names(metadata)
    return {before: base, after: tuned}, tokenizer, metadata


def run_compare(args, decoding):
    prompts = compare.read_prompts(args.prompts) if args.prompts else compare.DEFAULT_PROMPTS
    contenders, tokenizer, metadata = load_contenders(args)
    window = models.context_window(next(iter(contenders.values()))) or 2048  # the starting model's
    check_prompt_lengths(tokenizer, prompts, window, decoding.max_new_tokens)
    results, summaries = {}, {}
    for name, model in contenders.items():
        results[name], speed = compare.generate_answers(model, tokenizer, prompts, decoding, args.cut_at_role, name)
        summaries[name] = compare.summarize(results[name], speed)
    compare.print_answers(results)
    print("\n" + "\n".join(compare.metrics_table(summaries)))
    if metadata is not None:
        compare.write_report(Path(args.model), dict(zip(results, (metadata["base_model"], args.model))),
                             decoding, results, summaries)
        print(f"\nReport written to {Path(args.model) / compare.REPORT_MD} and {compare.REPORT_JSON}.")


def run_eval(args, decoding):
    if not Path(args.model).expanduser().is_dir():  # a folder without metadata evaluates its base model alone
        models.finetuned_source(args.model)  # refuses, saying how to train one
    device = pick_device(args.precision)
    limit = args.limit if args.limit is not None else (None if device.kind == "cuda" else evaluate.CPU_PROMPTS)
    items = ifeval.prompts(limit)  # refuses a bad --limit before any model is loaded
    if args.limit is None and limit is not None:
        print(f"On a CPU: {limit} of IFEval's {ifeval.NUM_PROMPTS} prompts, sized to take 10 to 15 minutes with "
              f"the offline kit (--limit {ifeval.NUM_PROMPTS} for all of them).")
    contenders, tokenizer, metadata = load_contenders(args)
    window = models.context_window(next(iter(contenders.values()))) or 2048
    check_prompt_lengths(tokenizer, [item["prompt"] for item in items], window, decoding.max_new_tokens)
    held_out = evaluate.held_out_chats(metadata) if metadata else None  # and cut as its SFT run cut them:
    max_length = evaluate.sft_run(metadata)["settings"]["max_length"] if held_out else window
    results = evaluate.evaluate(contenders, tokenizer, items, decoding, held_out, max_length)
    print("\n" + "\n".join(evaluate.table(results)))
    print("\nIFEval's instruction types that the kit's form instructions teach, and the others:\n"
          + "\n".join(evaluate.taught_table(results)))
    if metadata is not None:
        about = {"prompts": len(items), "of": ifeval.NUM_PROMPTS, "max_new_tokens": decoding.max_new_tokens,
                 "subset": "all" if len(items) == ifeval.NUM_PROMPTS else "prompt i x 541 // N of the file",
                 "sentence_splitter": ifeval.SENTENCE_SPLITTER, "machine": device.name, "precision": device.precision,
                 "batch_size": decoding.batch_size, "seconds": results["seconds"], "decoding": decoding.describe()}
        report_card.write(Path(args.model), metadata, items, results, about)
        print(f"\nReport card written to {Path(args.model) / report_card.REPORT_MD} (with {report_card.REPORT_JSON} "
              f"and {report_card.REPORT_PNG}).")


def run_web(args, decoding):
    from sft.serve.web import ChatServer, check_exposure, is_loopback, page_address

    check_exposure(args.host, args.api_key)  # before minutes of loading, not after
    contenders, tokenizer, metadata = load_contenders(args)
    contenders = dict(zip(("base", "fine-tuned"), contenders.values()))  # the page's names for the two models
    about = (f"{args.model}, {'DPO' if metadata.get('stage') == 'dpo' else 'fine-tuned'} from "
             f"{metadata['base_model']}: every message is rendered by its chat "
             "template, for both models." if metadata else f"No fine-tuned model in {args.model}: the base model "
             f"{args.base_model} alone. Train one with python quick_test.py, then serve it with --model ./chatbot-test.")
    names = compare.contender_names(metadata)  # "base" and "fine-tuned", or "SFT" and "DPO"
    titles = dict(zip(contenders, (f"{name[0].upper()}{name[1:]} model" for name in names)))
    window = models.context_window(contenders["base"]) or 2048
    page_decoding = {"sample": decoding.sample, "temperature": decoding.temperature, "top_p": decoding.top_p,
                     "repetition_penalty": decoding.repetition_penalty}  # what the page starts with
    server = ChatServer((args.host, args.port), contenders, tokenizer, window,
                        {"about": about, "titles": titles, "decoding": page_decoding}, args.max_queued, args.api_key)
    port = server.server_address[1]
    if not is_loopback(args.host):
        print(f"WARNING: serving on {args.host}: anyone who can reach this machine on port {port} and has the API "
              "key can use the model.")
    print(f"Chat in your browser: {page_address(args.host, port)}  (OpenAI-compatible API at /v1; Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop_generations()  # answers being streamed end at their next token
        print("\nServer stopped.")
    finally:
        server.server_close()
    # Everything is written and closed. Exit now, without torch's own teardown: in bf16 on a CPU it aborted
    # ("terminate called without an active exception", exit status -6) after answers stopped mid-way.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_chat(args, decoding):
    model, tokenizer = load_for_generation(models.finetuned_source(args.model), args.precision)
    window = models.context_window(model) or 2048
    if args.prompt is not None:  # one answer, printed whole: for scripts
        print(answer_once(model, tokenizer, [{"role": "user", "content": args.prompt}], decoding, window,
                          write=lambda piece: None))
        return
    print(f"Decoding: {decoding.describe()} (--greedy, --temperature, --top-p, --repetition-penalty change it).")
    repl(model, tokenizer, decoding, window, args.model)


def decoding_for(args) -> Decoding:
    """compare and eval: greedy unless --sample. Chat (interactive, -p, web): the model folder's own chat
    defaults (generation_config.json) unless --greedy. Flags given override either."""
    chatting = args.prompt is not None or args.mode in ("interactive", "web")
    defaults = {} if args.greedy or not chatting else chat_defaults(args.model)
    default_length = evaluate.MAX_NEW_TOKENS if args.mode == "eval" and args.prompt is None else MAX_NEW_TOKENS
    def given(flag, key, fallback):
        return flag if flag is not None else defaults.get(key, fallback)

    return Decoding(max_new_tokens=args.max_new_tokens or default_length,
                    sample=args.sample or defaults.get("do_sample", False),
                    temperature=given(args.temperature, "temperature", CHAT_DEFAULTS["temperature"]),
                    top_p=given(args.top_p, "top_p", CHAT_DEFAULTS["top_p"]),
                    repetition_penalty=given(args.repetition_penalty, "repetition_penalty", 1.0),
                    seed=args.seed, batch_size=args.batch_size or (64 if pick_device().kind == "cuda" else BATCH_SIZE))


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    quiet_library_chatter()
    decoding = decoding_for(args)
    if args.prompt is not None or args.mode == "interactive":
        run_chat(args, decoding)
    elif args.mode == "eval":
        run_eval(args, decoding)
    elif args.mode == "web":
        run_web(args, decoding)
    else:
        run_compare(args, decoding)


if __name__ == "__main__":
    main()
