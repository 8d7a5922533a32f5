"""The kit's form instructions: every checker tells a passing answer from a failing one, every generated
example obeys its instruction by our checker and by IFEval's own, and no generated request overlaps IFEval."""

import random
from collections import Counter

import pytest

from sft.data import constraints, kit
from sft.eval import ifeval

C = constraints.CONSTRAINTS
PASS_FAIL = [  # (type, fields, an answer that obeys, one that does not)
    ("english_lowercase", {}, "paris is the capital.", "Paris is the capital."),
    ("english_capital", {}, "PARIS IS THE CAPITAL.", "PARIS is the capital."),
    ("no_comma", {}, "Red and blue.", "Red, and blue."),
    ("quotation", {}, '"Paris."', 'Paris."'),
    ("json_format", {}, '```json\n{"answer": "Paris"}\n```', '{"answer": Paris}'),
    ("end_checker", {"phrase": "That is all."}, "Paris.\nThat is all.", "That is all. Paris."),
    ("title", {}, "<<Capitals>>\nParis.", "<Capitals>\nParis."),
    ("number_bullet_lists", {"n": 2}, "* one\n* two", "* one\n* two\n* three"),
    ("number_paragraphs", {"n": 2}, "One.\n\n***\n\nTwo.", "One.\n\nTwo."),
    ("number_highlighted_sections", {"n": 2}, "*one* and *two*", "*one* and two"),
    ("postscript", {}, "Paris.\n\nP.S. Visit.", "Paris. Visit."),
    ("existence", {"words": ["paris", "river"]}, "Paris has a river.", "Paris has a canal."),
    ("number_words", {"relation": "less than", "n": 4}, "Paris is big.", "Paris is very big."),
    ("number_words", {"relation": "at least", "n": 4}, "Paris is very big.", "Paris is big."),
    ("number_sentences", {"relation": "at most", "n": 1}, "Paris.", "Paris. Big."),
    ("number_sentences", {"relation": "at least", "n": 2}, "Paris. Big.", "Paris."),
]


@pytest.mark.parametrize("name,fields,good,bad", PASS_FAIL)
def test_each_checker_passes_an_obeying_answer_and_fails_another(name, fields, good, bad):
    assert C[name].check(good, fields)
    assert not C[name].check(bad, fields)


def ifeval_kwargs(example: constraints.Constrained) -> dict:
    """The example's fields as IFEval's checker names them (our "at most n" is its "less than n+1")."""
    f, kind = example.fields, example.ifeval_id.split(":")[1]
    if kind in ("number_words", "number_sentences"):
        relation, n = ("less than", f["n"] + 1) if f["relation"] == "at most" else (f["relation"], f["n"])
        key = "num_words" if kind == "number_words" else "num_sentences"
        return {"relation": relation, key: n}
    return {"end_checker": {"end_phrase": f.get("phrase")}, "number_bullet_lists": {"num_bullets": f.get("n")},
            "number_paragraphs": {"num_paragraphs": f.get("n")},
            "number_highlighted_sections": {"num_highlights": f.get("n")},
            "postscript": {"postscript_marker": "P.S."}, "existence": {"keywords": f.get("words")}}.get(kind, {})


@pytest.fixture(scope="module")
def generated():
    """Form-instruction examples made from 1,500 kit exchanges, each type tried on every exchange."""
    pool, _ = kit.sharegpt_exchanges()
    banned = kit.ifeval_runs()
    rng, examples = random.Random(0), []
    for chat in pool[:1500]:
        made = constraints.constrain(chat, rng, banned)
        if made is not None:
            examples.append((chat, made))
    return examples


def test_every_generated_example_obeys_by_our_checker_and_by_ifevals(generated):
    rules = ifeval.checker()
    assert len(generated) > 1000
    kinds = Counter(made.ifeval_id for _, made in generated)
    assert set(kinds) == set(constraints.TRAINED), "every type must fit some kit answers"
    for original, made in generated:
        answer = made.chat[-1]["content"]
        assert C[made.ifeval_id.split(":")[1]].check(answer, made.fields)
        example = rules.InputExample(key=0, instruction_id_list=[made.ifeval_id], prompt=made.chat[-2]["content"],
                                     kwargs=[ifeval_kwargs(made)])
        assert rules.test_instruction_following_strict(example, answer).follow_instruction_list == [True], (
            made.ifeval_id, made.fields, answer)
        assert original[-2]["content"] in made.chat[-2]["content"]  # the request is kept, an instruction added


def test_no_generated_request_shares_eight_words_with_an_ifeval_prompt(generated):
    banned = set().union(*(kit.word_runs(p["prompt"]) for p in ifeval.prompts()))
    for _, made in generated:
        assert not kit.word_runs(made.chat[-2]["content"]) & banned
    for constraint in C.values():  # the phrasings alone, with sample fields
        for phrasing in constraint.phrasings:
            text = phrasing.format(n=3, phrase="That is all for now.", key="answer", listed="river\" and \"bank",
                                   relation="at least")
            assert not kit.word_runs(text) & banned, text


def test_a_request_that_would_overlap_ifeval_is_dropped():
    request = "Name one large city in France that is not its capital."
    chat = [{"role": "user", "content": request}, {"role": "assistant", "content": "Lyon is a large city."}]
    assert constraints.constrain(chat, random.Random(0), set()) is not None
    assert constraints.constrain(chat, random.Random(0), kit.word_runs(request)) is None


def test_taught_and_held_out_types_split_ifevals_types():
    used = {i for p in ifeval.prompts() for i in p["instruction_id_list"]}
    assert set(constraints.TRAINED).isdisjoint(constraints.HELD_OUT)
    assert set(constraints.TRAINED) | set(constraints.HELD_OUT) == used


def test_about_the_share_asked_for_is_constrained_and_the_rest_is_untouched():
    pool, _ = kit.sharegpt_exchanges()
    chats, made = constraints.with_constraints(pool[:400], 0.3, 1, set())
    changed = sum(a is not b for a, b in zip(chats, pool[:400]))
    assert changed == sum(made.values())
    assert 0.2 * 400 < changed < 0.3 * 400 + 20
