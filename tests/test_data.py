"""Load: every supported dataset format becomes the same list of messages; bad records are named."""

import json

import pytest
from conftest import write_jsonl

from sft.data import load
from sft.errors import UserError

USER_Q = "What is the capital of France?"
ANSWER = "The capital of France is Paris."
EXPECTED = [{"role": "user", "content": USER_Q}, {"role": "assistant", "content": ANSWER}]


def load_file(path, num_train=10, eval_fraction=0.0, seed=0):
    return load.chat_dataset(str(path), "train", num_train, eval_fraction, seed, offline=False,
                             hub_available=lambda: pytest.fail("a local file must not ask the Hub"))


@pytest.mark.parametrize("record, format_name", [
    ({"messages": EXPECTED}, "messages"),
    ({"conversations": [{"from": "human", "value": USER_Q}, {"from": "gpt", "value": ANSWER}]}, "sharegpt"),
    ({"instruction": USER_Q, "input": "", "output": ANSWER}, "alpaca"),
    ({"instruction": USER_Q, "context": "", "response": ANSWER, "category": "open_qa"}, "dolly"),
    ({"prompt": USER_Q, "completion": ANSWER}, "prompt-completion"),
    ({"prompt": [EXPECTED[0]], "completion": [EXPECTED[1]]}, "prompt-completion"),
    ({"text": f"### Human: {USER_Q}### Assistant: {ANSWER}"}, "guanaco-text"),
])
def test_each_format_becomes_messages(tmp_path, record, format_name):
    chats = load_file(write_jsonl(tmp_path / "one.jsonl", [record]))
    assert chats.format == format_name
    assert chats.train == [EXPECTED]


def test_system_message_is_kept(tmp_path):
    system = {"role": "system", "content": "Answer briefly."}
    sharegpt = {"conversations": [{"from": "system", "value": "Answer briefly."},
                                  {"from": "human", "value": USER_Q}, {"from": "gpt", "value": ANSWER}]}
    assert load_file(write_jsonl(tmp_path / "a.jsonl", [{"messages": [system, *EXPECTED]}])).train == [[system, *EXPECTED]]
    assert load_file(write_jsonl(tmp_path / "b.jsonl", [sharegpt])).train == [[system, *EXPECTED]]


def test_alpaca_and_dolly_append_input_and_context(tmp_path):
    alpaca = load_file(write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Translate.", "input": "Bonjour", "output": "Hello"}]))
    dolly = load_file(write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Summarise.", "context": "Long text.",
                                                      "response": "Short."}]))
    assert alpaca.train[0][0]["content"] == "Translate.\n\nBonjour"
    assert dolly.train[0][0]["content"] == "Summarise.\n\nLong text."


def test_guanaco_multi_turn(tmp_path):
    text = "### Human: Hi### Assistant: Hello!### Human: Bye### Assistant: Goodbye!"
    chats = load_file(write_jsonl(tmp_path / "g.jsonl", [{"text": text}]))
    assert [m["role"] for m in chats.train[0]] == ["user", "assistant", "user", "assistant"]
    assert chats.train[0][3]["content"] == "Goodbye!"


def test_other_file_types_and_saved_datasets(tmp_path):
    import datasets

    table = datasets.Dataset.from_list([{"prompt": USER_Q, "completion": ANSWER}])
    table.to_parquet(str(tmp_path / "d.parquet"))
    table.to_csv(str(tmp_path / "d.csv"), index=False)
    (tmp_path / "d.json").write_text(json.dumps([{"prompt": USER_Q, "completion": ANSWER}]))
    table.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train_sft": table}).save_to_disk(str(tmp_path / "saved_dict"))
    for name in ("d.parquet", "d.csv", "d.json", "saved"):
        assert load_file(tmp_path / name).train == [EXPECTED], name
    chats = load.chat_dataset(str(tmp_path / "saved_dict"), "train_sft", 10, 0.0, 0, False, lambda: False)
    assert chats.train == [EXPECTED] and chats.split == "train_sft"


def oasst_row(message_id, parent_id, role, text, rank=None):
    return {"message_id": message_id, "parent_id": parent_id, "role": role, "text": text, "rank": rank,
            "lang": "en", "deleted": False}


def test_oasst_tree_keeps_best_ranked_path(tmp_path):
    rows = [
        oasst_row("q1", None, "prompter", "Root question"),
        oasst_row("a1", "q1", "assistant", "Second-best answer", rank=1),
        oasst_row("a2", "q1", "assistant", "Best answer", rank=0),
        oasst_row("q2", "a2", "prompter", "Follow-up"),
        oasst_row("a3", "q2", "assistant", "Unranked reply"),
        oasst_row("x1", None, "prompter", "Question nobody answered"),
        oasst_row("r1", None, "prompter", "Other root"),
        oasst_row("r2", "r1", "assistant", "Other answer", rank=0),
        oasst_row("r3", "r2", "prompter", "Dangling question"),  # a chat ends with an answer
    ]
    chats = load_file(write_jsonl(tmp_path / "oasst.jsonl", rows))
    assert chats.format == "oasst"
    contents = sorted([m["content"] for m in chat] for chat in chats.train)
    assert contents == [["Other root", "Other answer"],
                        ["Root question", "Best answer", "Follow-up", "Unranked reply"]]
    assert chats.train[0][0]["role"] == "user"


def test_bad_record_names_file_and_record(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": EXPECTED},
                                                {"messages": [{"role": "wizard", "content": "hi"}]}])
    with pytest.raises(UserError) as error:
        load_file(path)
    assert "bad.jsonl" in str(error.value) and "record 1" in str(error.value) and "wizard" in str(error.value)


def test_unknown_columns_are_refused(tmp_path):
    with pytest.raises(UserError) as error:
        load_file(write_jsonl(tmp_path / "odd.jsonl", [{"question": "a", "answer": "b"}]))
    assert "odd.jsonl" in str(error.value) and "question" in str(error.value) and "messages" in str(error.value)


def test_missing_path_and_unsupported_type(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_file(tmp_path / "nope.jsonl")
    (tmp_path / "chats.txt").write_text("hello")
    with pytest.raises(UserError, match="unsupported file type"):
        load_file(tmp_path / "chats.txt")


def test_sampling_is_seeded_and_eval_is_held_out(chats_jsonl):
    first = load_file(chats_jsonl, num_train=20, eval_fraction=0.05, seed=1)
    again = load_file(chats_jsonl, num_train=20, eval_fraction=0.05, seed=1)
    other = load_file(chats_jsonl, num_train=20, eval_fraction=0.05, seed=2)
    assert len(first.train) == 20 and len(first.eval) == load.MIN_EVAL_CONVERSATIONS
    assert (first.train, first.eval) == (again.train, again.eval)
    assert first.train != other.train
    assert not {json.dumps(c) for c in first.train} & {json.dumps(c) for c in first.eval}


def test_too_few_conversations_uses_all_with_notice(chats_jsonl):
    chats = load_file(chats_jsonl, num_train=500, eval_fraction=0.05)
    assert len(chats.train) + len(chats.eval) == 80 and len(chats.eval) >= 1
    assert any("only 80" in notice for notice in chats.notices)


def test_offline_falls_back_to_the_kit_corpus():
    chats = load.chat_dataset("HuggingFaceH4/ultrachat_200k", "train_sft", 50, 0.02, 0, offline=False,
                              hub_available=lambda: False)
    assert chats.source == "offline-kit" and len(chats.train) == 50 and len(chats.eval) == 32
    assert any("unreachable and HuggingFaceH4/ultrachat_200k is not in the local cache" in n for n in chats.notices)
    assert chats.train[0][0]["role"] == "user" and chats.train[0][1]["role"] == "assistant"
