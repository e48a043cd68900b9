"""The conversation-skill corpus: well-formed chats of every kind, true to what they state, the user's
facts answered in the second person, strangers answered with "I don't know", a world fact's records far
apart, deterministic; and `nimllm train` mixes it in unless told --no-chat-skills."""
import json
import re
from collections import Counter

import numpy as np
import pytest

from conftest import REPO, real_text, train_tiny

from nimllm import dialogues
from nimllm.cli import build_parser
from nimllm.data import TokenShards, conversation, prepare_corpus
from nimllm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def corpus() -> dialogues.Corpus:
    return dialogues.build(4000, seed=0)


def last_exchanges(d: dialogues.Dialogue) -> list[tuple[str, str]]:
    """The talk's last questions and replies, one per fact in d.asked."""
    tail = d.messages[len(d.messages) - 2 * len(d.asked):]
    return [(q, a) for (_, q), (_, a) in zip(tail[::2], tail[1::2])]


def test_records_are_chats_of_every_kind_and_relation(corpus):
    records = [d.record() for d in corpus.dialogues]
    assert len(records) == 4000
    for record in records:
        messages = conversation(json.loads(json.dumps(record)))
        assert messages and [role for role, _ in messages] == ["user", "assistant"] * (len(messages) // 2)
        assert all(text.strip() == text and text for _, text in messages)
    kinds = Counter(r["kind"] for r in records)
    assert set(kinds) == {"tell", "recall", "unknown_in_context", "unknown", "known", "smalltalk"}
    assert min(kinds.values()) >= 100, kinds
    assert len(dialogues.RELATIONS) >= 25
    told = {f.relation.name for d in corpus.dialogues for f in d.stated + d.asked}
    assert told == set(dialogues.RELATIONS)
    for r in dialogues.RELATIONS.values():
        assert len(r.statements) >= 2 and len(r.questions) >= 2, r.name


def test_answers_restate_what_was_said(corpus):
    checked = 0
    for d in corpus.dialogues:
        if d.kind not in ("recall", "unknown_in_context") or not d.asked:
            continue
        said = " ".join(text for role, text in d.messages if role == "user")
        for fact, (_, answer) in zip(d.asked, last_exchanges(d)):
            assert fact.value.lower() in answer.lower() and fact.value.lower() in said.lower(), (d.messages, fact)
            assert answer.endswith(".") and "?" not in answer
            checked += 1
    assert checked > 1000


def test_the_users_own_facts_come_back_as_yours(corpus):
    mine = [(question, answer) for d in corpus.dialogues if d.kind == "recall"
            for fact, (question, answer) in zip(d.asked, last_exchanges(d)) if fact.who is dialogues.USER]
    assert len(mine) > 200
    for question, answer in mine:
        assert re.search(r"\b(I|my|me)\b", question), question
        assert re.search(r"\b(you|your)\b", answer, re.I) and not re.search(r"\b(I|my|me|I'm)\b", answer), answer
    assert ("What is my sister called?", "Your sister is called ") in {(q, a[:len("Your sister is called ")])
                                                                     for q, a in mine}


def test_what_was_never_said_is_not_known(corpus):
    text_of = [" ".join(t for _, t in d.messages) for d in corpus.dialogues]
    everything = "\n".join(text_of)
    strangers = 0
    for i, d in enumerate(corpus.dialogues):
        if d.kind in ("unknown", "unknown_in_context"):
            reply = d.messages[len(d.messages) - 2 * len(d.asked) - 1][1]
            assert "don't know" in reply or "not sure" in reply, d.messages
            fact = d.not_known[0]
            assert not any(f.who == fact.who and f.relation == fact.relation for f in d.stated)
        if d.kind == "unknown":
            name = d.not_known[0].who.name
            assert len(name.split()) == 2 and everything.count(name) == text_of[i].count(name), name
            strangers += 1
    assert strangers > 300


def test_a_world_facts_records_are_far_apart(corpus):
    where = {}
    for i, d in enumerate(corpus.dialogues):
        if d.group is not None:
            where.setdefault(d.group, []).append(i)
    assert len(where) == 4000 // dialogues.PEOPLE_PER_WORLD_PERSON
    told = Counter((d.group, f.relation.name) for d in corpus.dialogues if d.group is not None for f in d.stated)
    assert set(told.values()) == {dialogues.TELLS_PER_FACT}           # each fact told in two records
    assert min(b - a for places in where.values() for a, b in zip(places, places[1:])) >= 50
    asked_alone = {d.group for d in corpus.dialogues if d.kind == "known" and len(d.asked) == 1}
    assert len(asked_alone) == len(where) // 2                     # questions for half of the people only
    for d in corpus.dialogues:
        if d.kind == "known":
            assert len(d.messages) == 2 and all(f.value.lower() in d.messages[1][1].lower() for f in d.asked)


def test_no_name_or_answer_of_the_benchmarks(corpus):
    bench = [json.loads(line) for line in (REPO / "bench" / "memory_facts.jsonl").read_text().splitlines() if line]
    bench_words = set(re.findall(r"\b[A-Z][a-z]+\b", " ".join(json.dumps(f) for f in bench)))
    assert not bench_words & set(dialogues.FEMALE + dialogues.MALE)
    from nimllm.vocab import FIRST_NAMES
    assert not set(FIRST_NAMES) & set(dialogues.FEMALE + dialogues.MALE)
    text = "\n".join(t for d in corpus.dialogues for _, t in d.messages)
    for answer in {f["answer"] for f in bench}:
        assert not re.search(rf"\b{re.escape(answer)}\b", text, re.I), answer


def test_same_seed_same_corpus(tmp_path):
    a = dialogues.corpus_for(tmp_path / "a", 300, seed=3, log=lambda *_: None)
    b = dialogues.corpus_for(tmp_path / "b", 300, seed=3, log=lambda *_: None)
    c = dialogues.corpus_for(tmp_path / "c", 300, seed=4, log=lambda *_: None)
    assert a == tmp_path / "a" / "chat-skills" / "dialogues-300-seed3.jsonl"
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert len(a.read_text().splitlines()) == 300
    written = a.stat().st_mtime_ns
    assert dialogues.corpus_for(tmp_path / "a", 300, seed=3, log=print) == a and a.stat().st_mtime_ns == written


def test_the_dialogues_become_chat_template_shards(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text(real_text(20_000))
    path = dialogues.corpus_for(tmp_path, 200, log=lambda *_: None)
    tokenizer = Tokenizer.train([book.read_text(), path.read_text()], vocab_size=300)
    info = prepare_corpus([book, path], tokenizer, tmp_path / "data", block_size=64, quiet=True)
    assert info.stats.documents == 1 + 200
    tokens = np.concatenate([np.asarray(s) for split in ("train", "val")
                             for s in TokenShards(tmp_path / "data", split).shards])
    turns = sum(len(r["messages"]) // 2 for r in map(json.loads, path.read_text().splitlines()))
    assert (tokens == tokenizer.special("<|user|>")).sum() == (tokens == tokenizer.special("<|assistant|>")).sum() == turns


@pytest.mark.slow
def test_train_mixes_them_in_unless_told_not_to(tmp_path):
    assert build_parser().parse_args(["train"]).chat_skills is None   # the default is chosen (test_train.py)
    assert build_parser().parse_args(["train", "--no-chat-skills"]).chat_skills == 0
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    with_them = train_tiny(tmp_path / "on", "--chat-skills", 400, steps=2)
    path = with_them / "chat-skills" / "dialogues-400-seed0.jsonl"
    assert len(path.read_text().splitlines()) == 400
    corpora = json.loads((with_them / "config.json").read_text())["corpora"]
    assert corpora[-1]["mixed_in"] == [str(path)]
    without = train_tiny(tmp_path / "off", "--no-chat-skills", steps=2)
    assert not (without / "chat-skills").exists()
    assert "mixed_in" not in json.loads((without / "config.json").read_text())["corpora"][-1]
