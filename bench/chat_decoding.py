"""Choose the chat decoding defaults that training writes into generation_config.json, by measurement.

    python bench/chat_decoding.py --model ./chatbot-test

The model answers the same held-out kit requests (the test split, never trained on; each with a form
instruction, as bench/kit_sweep.py asks them) with each decoding setting below, up to 256 new tokens.
Prints, per setting: compare's labels (clean stop, role leak, repetition, mean tokens) and the share of
instructions followed by their own checkers. IFEval's prompts are not used: they judge, they do not tune.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SETTINGS = {  # name -> Decoding fields
    "greedy": {},
    "greedy, repetition penalty 1.1": {"repetition_penalty": 1.1},
    "sampling 0.7 / top-p 0.9": {"sample": True, "temperature": 0.7, "top_p": 0.9},
    "sampling 0.7 / top-p 0.9, repetition penalty 1.1": {"sample": True, "temperature": 0.7, "top_p": 0.9,
                                                         "repetition_penalty": 1.1},
}


def main() -> None:
    from sft import models
    from sft.data.constraints import CONSTRAINTS, held_out_requests
    from sft.devices import pick_device
    from sft.eval import compare
    from sft.generation import Decoding, load_for_generation

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="./chatbot-test")
    parser.add_argument("--limit", type=int, default=32, help="held-out kit requests")
    args = parser.parse_args()
    model, tokenizer = load_for_generation(models.finetuned_source(args.model))
    requests = held_out_requests(args.limit)
    prompts = [r.chat[-2]["content"] for r in requests]
    print("| decoding | clean stop | role leak | repetition | mean tokens | form instructions followed |\n"
          "|---|---|---|---|---|---|", flush=True)
    for name, fields in SETTINGS.items():
        decoding = Decoding(max_new_tokens=256, batch_size=32, seed=0, **fields)
        answers, speed = compare.generate_answers(model, tokenizer, prompts, decoding, name=name)
        b = compare.summarize(answers, speed)
        followed = sum(CONSTRAINTS[r.ifeval_id.split(":")[1]].check(a.text.strip(), r.fields)
                       for r, a in zip(requests, answers)) / len(requests)
        print(f"| {name} | {b['clean_stop_rate']:.0%} | {b['role_leak_rate']:.0%} | {b['repetition_rate']:.0%} | "
              f"{b['mean_answer_tokens']:.0f} | {followed:.0%} |", flush=True)
    print(f"\nMachine: {pick_device().name}; {args.model}; {len(requests)} held-out kit requests, up to 256 new tokens.")


if __name__ == "__main__":
    main()
