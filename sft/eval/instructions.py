"""Form instructions on held-out requests: each answered greedily, and scored by the instruction's own checker.

    score = instructions.score(model, tokenizer, requests)   # requests: constraints.requests(held-out chats, ...)
    print(score.line())    # form instructions followed 12/32 (37.5%), clean stop 81%, mean 64 tokens

train_grpo.py scores its starting model and its result this way, and bench/kit_sweep.py each run of a
sweep. The requests come from held-out chats, never trained on, and none shares 8 words in a row with an
IFEval prompt: IFEval judges a model once, at the end (test_chatbot.py --mode eval), and is not tuned on.
"""

from dataclasses import dataclass

from sft.data.constraints import Constrained, follows
from sft.eval import compare
from sft.eval.evaluate import MAX_NEW_TOKENS  # as --mode eval
from sft.generation import Decoding


@dataclass
class Score:
    requests: list[Constrained]
    answers: list[compare.Answer]
    followed: list[bool]

    @property
    def share(self) -> float:
        return sum(self.followed) / len(self.followed)

    def line(self) -> str:
        behaviour = compare.summarize(self.answers, 0.0)
        return (f"form instructions followed {sum(self.followed)}/{len(self.followed)} ({self.share:.1%}), "
                f"clean stop {behaviour['clean_stop_rate']:.0%}, mean {behaviour['mean_answer_tokens']:.0f} tokens")

    def examples(self, n: int = 2) -> str:
        """The first `n` answers, each under its request, marked followed or not."""
        shown = []
        for request, answer, ok in list(zip(self.requests, self.answers, self.followed))[:n]:
            shown.append(f"  [{'followed' if ok else 'not followed'}: {request.ifeval_id}] "
                         f"{request.chat[-2]['content'][-120:]!r}\n    -> {answer.text[:200]!r}")
        return "\n".join(shown)

    def as_dict(self) -> dict:
        return {"followed": self.share, "requests": len(self.requests),
                **compare.summarize(self.answers, 0.0),
                "answers": [{"request": r.chat[-2]["content"], "instruction": r.ifeval_id, "answer": a.text,
                             "followed": ok} for r, a, ok in zip(self.requests, self.answers, self.followed)]}


def score(model, tokenizer, requests: list[Constrained], name: str = "fine-tuned", batch_size: int = 32) -> Score:
    """Each request answered greedily (after the chat's earlier turns, if any) and checked."""
    was_training, padding_side = model.training, tokenizer.padding_side
    model.eval()
    answers, _ = compare.generate_answers(model, tokenizer, [r.chat[:-1] for r in requests],
                                          Decoding(max_new_tokens=MAX_NEW_TOKENS, batch_size=batch_size), name=name)
    model.train(was_training)
    tokenizer.padding_side = padding_side  # a tokenizer being trained with keeps its own
    return Score(requests, answers, [follows(a.text, r.ifeval_id, r.fields) for r, a in zip(requests, answers)])
