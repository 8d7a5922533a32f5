"""The exported GGUF in llama.cpp against the project's own generation, side by side: answers and tokens per second.

    python export_gguf.py --model ./chatbot-test && python bench/gguf_speed.py --model ./chatbot-test
    python bench/gguf_speed.py --model ./chatbot-test --gguf a-f16.gguf --gguf a-q8_0.gguf --gguf a-q4_k_m.gguf

compare's seven prompts, one at a time as a chat asks them, greedy, up to --max-new-tokens each: with
sft.generation (transformers, the folder's weights in the precision --precision auto picks) and with
llama.cpp (llama-cpp-python) on each GGUF file, all on --threads threads (default: every core; 1 is
steadier on a machine that something else keeps busy, where two threads sharing a core wait for each
other). Each prompt is answered by every runtime in turn before the next prompt, so that a machine
whose load changes treats them alike. tokens/s = the answers' new tokens over the time from the prompt
to the last token, summed over the prompts (prompt processing included, loading not; one untimed
warm-up answer each first). Then the prompts whose first 32 tokens (or whole answer, if shorter), and
whose whole answer, equal the project's; where they part, the margin between transformers' two best
logits at that token: a small one is a near-tie that rounding can flip.
"""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def project_runtime(folder: str, max_new_tokens: int):
    """(answer(prompt) -> token ids up to and with end-of-text, the model, its tokenizer) with sft.generation."""
    from sft.generation import Decoding, generate_batch, load_for_generation
    from sft.models import finetuned_source

    model, tokenizer = load_for_generation(finetuned_source(folder))
    decoding = Decoding(max_new_tokens=max_new_tokens, batch_size=1)

    def answer(prompt: str) -> list[int]:
        return generate_batch(model, tokenizer, [[{"role": "user", "content": prompt}]], decoding, seed=0)[0][0]

    return answer, model, tokenizer


def llama_cpp_runtime(path: str, tokenizer, max_new_tokens: int, threads: int):
    """answer(prompt) -> token ids up to and with end-of-text, from llama.cpp, greedy, on the same prompt tokens."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False,
                          seed=0)

    def answer(prompt: str) -> list[int]:
        tokens = []
        for token in llm.generate(prompt_ids(tokenizer, prompt), temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            tokens.append(token)
            if token == llm.token_eos() or len(tokens) == max_new_tokens:
                break
        return tokens

    return answer


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         return_dict=True)["input_ids"]


def margins(model, tokenizer, prompt: str, answer: list[int]) -> list[float]:
    """At each token of the answer, transformers' best logit less its second best."""
    import torch

    ids = prompt_ids(tokenizer, prompt)
    with torch.no_grad():
        logits = model(torch.tensor([ids + answer], device=model.device)).logits[0, len(ids) - 1:].float()
    top = logits.topk(2).values
    return (top[:, 0] - top[:, 1]).tolist()


def agreement(expected: list[int], got: list[int], margin: list[float], n: int = 32) -> str:
    """"same" if the first n tokens are the project's, else where they part and transformers' margin there."""
    if expected[:n] == got[:n]:
        return "same"
    parted = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    return f"parts at token {parted} (margin {margin[parted]:.3f})"


def main():
    from sft.eval.compare import DEFAULT_PROMPTS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="./chatbot-test")
    parser.add_argument("--gguf", action="append", help="GGUF file(s) (default: MODEL/<name>-f16.gguf)")
    parser.add_argument("--max-new-tokens", type=int, default=150)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    files = args.gguf or [str(Path(args.model) / f"{Path(args.model).resolve().name}-f16.gguf")]

    import torch

    torch.set_num_threads(args.threads)
    project, model, tokenizer = project_runtime(args.model, args.max_new_tokens)
    names = [f"sft.generation (transformers, {str(model.dtype).removeprefix('torch.')})"]
    runtimes = [project] + [llama_cpp_runtime(path, tokenizer, args.max_new_tokens, args.threads) for path in files]
    names += [f"llama.cpp, {Path(path).name}" for path in files]
    answers, seconds = [[] for _ in runtimes], [0.0] * len(runtimes)
    for runtime in runtimes:
        runtime("Hello")  # warm-up
    for prompt in DEFAULT_PROMPTS:
        for i, runtime in enumerate(runtimes):
            started = time.perf_counter()
            answers[i].append(runtime(prompt))
            seconds[i] += time.perf_counter() - started

    expected = answers[0]
    margin = [margins(model, tokenizer, prompt, answer) for prompt, answer in zip(DEFAULT_PROMPTS, expected)]
    print(f"{args.model}, {len(DEFAULT_PROMPTS)} prompts one at a time, greedy, up to {args.max_new_tokens} new "
          f"tokens, {args.threads} thread{'s' if args.threads > 1 else ''}:\n")
    print("| runtime | new tokens | seconds | tokens/s | first 32 tokens as sft.generation's | whole answer |")
    print("|---|---|---|---|---|---|")
    for name, got, took in zip(names, answers, seconds):
        same = whole = ""
        if got is not expected:
            verdicts = [agreement(e, a, m) for e, a, m in zip(expected, got, margin)]
            details = "; ".join(f"prompt {i + 1}: {v}" for i, v in enumerate(verdicts) if v != "same")
            same = f"{verdicts.count('same')}/{len(verdicts)}" + (f" ({details})" if details else "")
            whole = f"{sum(e == a for e, a in zip(expected, got))}/{len(got)}"
        tokens = sum(map(len, got))
        print(f"| {name} | {tokens} | {took:.1f} | {tokens / took:.1f} | {same} | {whole} |")


if __name__ == "__main__":
    main()
