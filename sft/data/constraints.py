"""Constraint-following chats made from the kit's own exchanges, each one checked.

A kit request gets an instruction about the answer's form ("all in lowercase", "exactly 3 bullet
points", "end with ...") and its answer is rewritten so that it obeys: lowercased, its sentences made
into bullets, the phrase appended. Then the instruction's own checker, written here, must pass on the
rewritten answer, or the example is dropped. The wording is this project's, several phrasings per type,
and a request that shares 8 words in a row with an IFEval prompt is dropped (kit.word_runs), so IFEval
stays a test of what was never seen.

Each type names the IFEval instruction it teaches. IFEval's other types (HELD_OUT) are left out on
purpose: the report card scores the two groups apart, to show what was taught and what transferred.
"""

import functools
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from sft.data.kit import word_runs

HELD_OUT = ("change_case:capital_word_frequency", "combination:repeat_prompt", "combination:two_responses",
            "detectable_content:number_placeholders", "detectable_format:constrained_response",
            "detectable_format:multiple_sections", "keywords:forbidden_words", "keywords:frequency",
            "keywords:letter_frequency", "language:response_language", "length_constraints:nth_paragraph_first_word")
ENDINGS = ("That is all for now.", "Hope that answers it!", "Thanks for reading.", "Happy to help further.")
NOTES = ("Ask me if any part needs more detail.", "A follow-up question is always welcome.",
         "I can give an example if that helps.")
STOPWORDS = set("about after also because been before being between could does each from have here into just like "
                "make more most much only other over same some such than that their them then there these they this "
                "those through very want were what when where which while will with would your yours should".split())


@dataclass(frozen=True)
class Constraint:
    ifeval_id: str  # the IFEval instruction it teaches
    phrasings: tuple[str, ...]  # the instruction as added to a request; {n}, {phrase}, {words} filled in by make
    make: Callable  # (answer, request, rng) -> (fields for the phrasing, the answer rewritten to obey) or None
    check: Callable  # (answer, fields) -> whether the answer obeys


# --- helpers -------------------------------------------------------------------------------------------
def sentences(text: str) -> list[str]:
    """Sentences as NLTK's Punkt splits them, with the English parameters IFEval's checker counts them with."""
    return [s.strip() for s in sentence_splitter()(text) if s.strip()]


@functools.cache
def sentence_splitter():
    """nltk's sent_tokenize, once its English parameters are in place (ifeval.py writes them, once)."""
    import nltk

    from sft.eval.ifeval import prepare_sentence_splitter

    prepare_sentence_splitter()
    return nltk.tokenize.sent_tokenize


def english(text: str) -> bool:
    """What langdetect (seeded) says, as IFEval's "english" case checks do: an all-capitals text may not pass."""
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0
    try:
        return detect(text) == "en"
    except LangDetectException:
        return False


def words(text: str) -> list[str]:
    return re.findall(r"\b\w[\w'-]*\b", text)


def prose(answer: str) -> bool:
    """Plain sentences: no code, lists or markup, which the rewrites below would break."""
    return not re.search(r"```|^\s*([-*#>]|\d+\.)\s|[*<>{}|]", answer, re.MULTILINE)


def flat(answer: str) -> str:
    return " ".join(answer.split())


# --- the instruction types -----------------------------------------------------------------------------
def lowercase(answer, request, rng):
    return ({}, answer.lower()) if prose(answer) else None  # not code, whose names would change


def capitals(answer, request, rng):
    return ({}, answer.upper()) if prose(answer) else None


def no_commas(answer, request, rng):
    return ({}, answer.replace(",", "")) if "," in answer and prose(answer) else None


def quoted(answer, request, rng):
    return {}, f'"{answer}"'


def as_json(answer, request, rng):
    key = rng.choice(["answer", "response", "reply"])
    return {"key": key}, json.dumps({key: answer}, indent=2)


def ending(answer, request, rng):
    phrase = rng.choice(ENDINGS)
    return {"phrase": phrase}, f"{answer}\n\n{phrase}"


def titled(answer, request, rng):
    content = [w for w in words(request) if len(w) > 3 and w.lower() not in STOPWORDS]
    title = " ".join(content[:rng.randint(2, 4)]).title()
    return ({"title": title}, f"<<{title}>>\n\n{answer}") if title else None


def bullets(answer, request, rng):
    parts = sentences(flat(answer))
    if not prose(answer) or not 2 <= len(parts) <= 6:
        return None
    return {"n": len(parts)}, "\n".join(f"* {part}" for part in parts)


def paragraphs(answer, request, rng):
    parts = sentences(flat(answer))
    if not prose(answer) or len(parts) < 2:
        return None
    n = rng.randint(2, min(3, len(parts)))
    cut = [round(i * len(parts) / n) for i in range(n + 1)]
    return {"n": n}, "\n\n***\n\n".join(" ".join(parts[cut[i]:cut[i + 1]]) for i in range(n))


def highlighted(answer, request, rng):
    parts = sentences(flat(answer))
    if not prose(answer) or not parts:
        return None
    n = rng.randint(1, min(3, len(parts)))
    chosen = set(rng.sample(range(len(parts)), n))
    return {"n": n}, " ".join(f"*{part}*" if i in chosen else part for i, part in enumerate(parts))


def postscript(answer, request, rng):
    return {}, f"{answer}\n\nP.S. {rng.choice(NOTES)}"


def keywords(answer, request, rng):
    candidates = sorted({w.lower() for w in words(answer) if w.isalpha() and len(w) >= 5} - STOPWORDS)
    if len(candidates) < 2:
        return None
    chosen = rng.sample(candidates, 2)
    return {"words": chosen, "listed": f"{chosen[0]}\" and \"{chosen[1]}"}, answer


def word_limit(answer, request, rng):
    count = len(words(answer))
    if rng.random() < 0.5:
        return {"relation": "less than", "n": (count // 10 + 2) * 10}, answer
    return ({"relation": "at least", "n": count // 10 * 10}, answer) if count >= 20 else None


def sentence_limit(answer, request, rng):
    count = len(sentences(answer))
    if not prose(answer):
        return None
    if count <= 3 or rng.random() < 0.5:
        return {"relation": "at most", "n": count + rng.randint(0, 1)}, answer
    return {"relation": "at least", "n": count - 1}, answer


# --- their checkers ------------------------------------------------------------------------------------
def is_json(answer, fields):
    text = re.sub(r"^```(json)?\s*|\s*```$", "", answer.strip(), flags=re.IGNORECASE)
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def count_bullets(answer):
    return len(re.findall(r"^\s*[*-]\s", answer, re.MULTILINE))


def count_paragraphs(answer):
    parts = re.split(r"\s*\*\*\*\s*", answer.strip())
    return len(parts) if all(p.strip() for p in parts) else 0


def within_limit(count, fields):
    return {"less than": count < fields["n"], "at most": count <= fields["n"], "at least": count >= fields["n"]}[
        fields["relation"]]


CONSTRAINTS = {c.ifeval_id.split(":")[1]: c for c in [
    Constraint("change_case:english_lowercase",
               ("Write your whole answer in lowercase letters.", "Use no capital letters at all in your reply.",
                "Reply only in small letters, with no capitals."),
               lowercase, lambda a, f: a == a.lower() and any(c.isalpha() for c in a) and english(a)),
    Constraint("change_case:english_capital",
               ("Write your whole answer in capital letters.", "Reply in uppercase only.",
                "Put every letter of your answer in capitals."),
               capitals, lambda a, f: a == a.upper() and any(c.isalpha() for c in a) and english(a)),
    Constraint("punctuation:no_comma",
               ("Do not use any commas in your answer.", "Answer without a single comma.",
                "Leave out commas entirely."),
               no_commas, lambda a, f: "," not in a),
    Constraint("startend:quotation",
               ("Put your whole answer inside double quotes.", "Wrap the reply in double quotation marks.",
                "Enclose everything you write in double quotes."),
               quoted, lambda a, f: len(a.strip()) > 1 and a.strip()[0] == a.strip()[-1] == '"'),
    Constraint("detectable_format:json_format",
               ("Give the answer as a JSON object with the key \"{key}\".",
                "Reply with JSON only: an object whose \"{key}\" field holds the answer.",
                "Format your reply as a JSON object, the text under \"{key}\"."),
               as_json, is_json),
    Constraint("startend:end_checker",
               ("Finish with the words \"{phrase}\" and nothing after them.",
                "The last thing you write must be: {phrase}",
                "Close your reply with exactly this sentence: {phrase}"),
               ending, lambda a, f: a.strip().endswith(f["phrase"])),
    Constraint("detectable_format:title",
               ("Start with a title in double angle brackets, like <<Title>>.",
                "Give your answer a title, written as <<the title>>.",
                "Put a title wrapped in << and >> at the top."),
               titled, lambda a, f: re.search(r"<<[^\n<>]+>>", a) is not None),
    Constraint("detectable_format:number_bullet_lists",
               ("Answer as a list of exactly {n} bullet points, each starting with *.",
                "Use {n} bullet points (lines beginning with *), no more and no less.",
                "Reply in exactly {n} markdown bullets, like:\n* first point"),
               bullets, lambda a, f: count_bullets(a) == f["n"]),
    Constraint("length_constraints:number_paragraphs",
               ("Write {n} paragraphs, with a line of *** between each two.",
                "Split the answer into {n} paragraphs separated by the marker ***.",
                "Use exactly {n} paragraphs; put *** on its own line between them."),
               paragraphs, lambda a, f: count_paragraphs(a) == f["n"]),
    Constraint("detectable_format:number_highlighted_sections",
               ("Highlight at least {n} part(s) with markdown, like *this part*.",
                "Mark {n} or more sections as *highlighted*, between single asterisks.",
                "Emphasise at least {n} passage(s) by wrapping them in asterisks, *like so*."),
               highlighted, lambda a, f: len([m for m in re.findall(r"\*[^\n*]+\*", a) if m.strip("* ")]) >= f["n"]),
    Constraint("detectable_content:postscript",
               ("End with a postscript that starts with P.S.", "Add a P.S. at the end of your reply.",
                "After your answer, include a short note beginning with P.S."),
               postscript, lambda a, f: re.search(r"^\s*P\.S\.", a, re.MULTILINE) is not None),
    Constraint("keywords:existence",
               ("Make sure the words \"{listed}\" appear in your answer.",
                "Your reply has to use the words \"{listed}\".",
                "Include the words \"{listed}\" somewhere."),
               keywords, lambda a, f: all(re.search(rf"\b{w}\b", a, re.IGNORECASE) for w in f["words"])),
    Constraint("length_constraints:number_words",
               ("Keep the answer to {relation} {n} words.", "Use {relation} {n} words.",
                "Your reply should be {relation} {n} words long."),
               word_limit, lambda a, f: within_limit(len(words(a)), f)),
    Constraint("length_constraints:number_sentences",
               ("Answer in {relation} {n} sentences.", "Write {relation} {n} sentences.",
                "Your reply should have {relation} {n} sentences."),
               sentence_limit, lambda a, f: within_limit(len(sentences(a)), f)),
]}
TRAINED = tuple(c.ifeval_id for c in CONSTRAINTS.values())


@dataclass
class Constrained:
    chat: list[dict]  # the request with the instruction added, the answer rewritten to obey it
    ifeval_id: str  # the instruction's type
    fields: dict  # its parameters (a count, a phrase, keywords), as its checker reads them


def constrain(messages: list[dict], rng: random.Random, banned_runs: set) -> Constrained | None:
    """The chat with one instruction added to its last request and its last answer rewritten to obey; None
    when no type drawn fits, the rewrite fails its checker, or the request shares a run of words with IFEval."""
    request, answer = messages[-2]["content"], messages[-1]["content"]
    for name in rng.sample(sorted(CONSTRAINTS), 3):  # a few tries: not every type fits every answer
        constraint = CONSTRAINTS[name]
        made = constraint.make(answer, request, rng)
        if made is None:
            continue
        fields, obeying = made
        if not constraint.check(obeying, fields):
            continue
        instruction = rng.choice(constraint.phrasings).format(**fields)
        asked = f"{request}\n\n{instruction}" if rng.random() < 0.7 else f"{instruction}\n\n{request}"
        if word_runs(asked) & banned_runs:
            continue
        chat = messages[:-2] + [{"role": "user", "content": asked}, {"role": "assistant", "content": obeying}]
        return Constrained(chat, constraint.ifeval_id, fields)
    return None


def with_constraints(chats: list[list[dict]], share: float, seed: int, banned_runs: set) -> tuple[list, Counter]:
    """`chats` with about `share` of them given an instruction (see constrain), and how many of each type."""
    rng, out, made = random.Random(seed), [], Counter()
    for chat in chats:
        constrained = constrain(chat, rng, banned_runs) if rng.random() < share else None
        out.append(constrained.chat if constrained else chat)
        if constrained:
            made[constrained.ifeval_id] += 1
    return out, made


def requests(chats: list[list[dict]], limit: int, seed: int, banned_runs: set) -> list[Constrained]:
    """Up to `limit` of `chats` given a form instruction (see constrain): prompts whose answers a checker can
    score, for reinforcement learning (train_grpo.py) and held-out scores. The chats' own answers only decide
    which instructions fit; the model writes its own."""
    rng, made = random.Random(seed), []
    for chat in chats:
        if len(made) == limit:
            break
        if (constrained := constrain(chat, rng, banned_runs)) is not None:
            made.append(constrained)
    return made


def held_out_requests(limit: int, seed: int = 0) -> list[Constrained]:
    """Up to `limit` requests of the kit's test split, never trained on, each given a form instruction: for
    choosing settings without tuning on IFEval's prompts (bench/kit_sweep.py)."""
    from sft.data.kit import sharegpt_exchanges

    return requests(sharegpt_exchanges()[1], limit, seed, set())  # the kit shares no 8 words in a row with IFEval


def follows(answer: str, ifeval_id: str, fields: dict) -> bool:
    """Whether `answer` obeys the instruction, by its own checker, strictly (as IFEval: the answer as it is)."""
    return CONSTRAINTS[ifeval_id.split(":")[1]].check(answer.strip(), fields)
