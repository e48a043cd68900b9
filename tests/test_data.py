import json
import os
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nimllm.config import UserError
from nimllm.data import (SEGMENTATIONS, Corpus, CorpusInfo, CorpusStats, TokenShards, corpus_fingerprint,
                         default_corpus, iter_texts_for_tokenizer, prepare_corpus, prepared_with, read_blocks)
from nimllm.tokenizer import Tokenizer

EOT = "<|endoftext|>"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
SAMPLE = (STDLIB / "textwrap.py").read_text() + "Ça coûte 5 €, naïve café, 日本語 🙂\r\n" * 20


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train([SAMPLE], vocab_size=400)


def tokens_text(tokenizer, folder, split):
    shards = TokenShards(folder, split)
    return tokenizer.decode(shards.read(0, shards.num_tokens).tolist())


def write_tree(root: Path, files: dict[str, str | bytes]):
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def test_default_corpus_is_the_standard_library():
    assert (default_corpus() / "os.py").is_file()


def test_single_file_split_is_character_exact(tokenizer, tmp_path):
    text = SAMPLE * 3
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    info = prepare_corpus(tmp_path / "book.txt", tokenizer, tmp_path / "data", block_size=32)
    k = int(len(text) * 0.9)
    assert tokens_text(tokenizer, tmp_path / "data", "train") == text[:k] + EOT
    assert tokens_text(tokenizer, tmp_path / "data", "val") == text[k:] + EOT
    assert (info.train.bytes, info.val.bytes) == (len(text[:k].encode()), len(text[k:].encode()))
    assert (info.train.documents, info.val.documents, info.stats.documents) == (1, 1, 1)
    assert info == CorpusInfo.load(tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["meta.json", "train_000.bin", "val_000.bin"]
    assert info.dtype == "uint16" and os.path.getsize(tmp_path / "data" / "train_000.bin") == 2 * info.train.tokens


def test_bpe_dropout_adds_copies_of_the_training_text_in_other_segmentations(tokenizer, tmp_path):
    text = SAMPLE * 3
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    plain = prepare_corpus(tmp_path / "book.txt", tokenizer, tmp_path / "plain", block_size=32)
    info = prepare_corpus(tmp_path / "book.txt", tokenizer, tmp_path / "dropped", block_size=32, bpe_dropout=0.2)
    k = int(len(text) * 0.9)
    assert tokens_text(tokenizer, tmp_path / "dropped", "train") == (text[:k] + EOT) * SEGMENTATIONS
    train, plain_train = TokenShards(tmp_path / "dropped", "train"), TokenShards(tmp_path / "plain", "train")
    ids = train.read(0, train.num_tokens)
    copies = np.split(ids, np.flatnonzero(ids == tokenizer.eot_id)[:-1] + 1)
    first = plain_train.read(0, plain_train.num_tokens)
    assert len(copies) == SEGMENTATIONS and np.array_equal(copies[0], first)     # the first as the tokenizer spells it
    assert all(len(c) > len(first) for c in copies[1:]) and len({c.tobytes() for c in copies}) == SEGMENTATIONS
    val, plain_val = TokenShards(tmp_path / "dropped", "val"), TokenShards(tmp_path / "plain", "val")
    assert np.array_equal(val.read(0, val.num_tokens), plain_val.read(0, plain_val.num_tokens))   # scored as used
    assert (info.segmentations, info.bpe_dropout, info.train.bytes, info.val) == (SEGMENTATIONS, 0.2, plain.train.bytes,
                                                                                  plain.val)
    assert train.tokens_per_pass == info.train.tokens // SEGMENTATIONS and val.tokens_per_pass == val.num_tokens
    assert prepared_with(tmp_path / "dropped", tokenizer, 0.2) and prepared_with(tmp_path / "plain", tokenizer)
    assert not prepared_with(tmp_path / "dropped", tokenizer) and not prepared_with(tmp_path / "plain", tokenizer, 0.2)


def test_folder_skips_binaries_hidden_and_caches(tokenizer, tmp_path):
    texts = {f"notes/day{i}.md": f"# Day {i}\n" + SAMPLE[i * 300:(i + 1) * 300] for i in range(20)}
    texts |= {"a.py": "print('hello')\n", "deep/er/still/b.txt": "bottom of the tree\n"}
    records = [{"text": "first record"}, {"text": "second\nrecord"}]
    write_tree(tmp_path / "corpus", texts | {
        "chats/log.jsonl": "".join(json.dumps(r) + "\n" for r in records),
        "image.png": "not really a png, but named like one",
        "blob.dat": b"\x7fELF\x00\x01\x02 binary",
        ".git/config": "[core]\n",
        ".hidden.txt": "secret",
        "__pycache__/a.cpython-311.pyc": "cache",
        "node_modules/pkg/index.js": "module.exports = 1\n",
        "empty.txt": "",
    })
    info = prepare_corpus(tmp_path / "corpus", tokenizer, tmp_path / "data", block_size=16)
    assert info.stats.skipped_binary == 2  # image.png by its name, unread; blob.dat by a NUL byte
    assert (info.stats.files, info.stats.documents) == (len(texts) + 1, len(texts) + 2)
    train = tokens_text(tokenizer, tmp_path / "data", "train").split(EOT)
    val = tokens_text(tokenizer, tmp_path / "data", "val").split(EOT)
    assert train[-1] == val[-1] == ""  # each document is followed by an end-of-text token
    assert sorted(train[:-1] + val[:-1]) == sorted([*texts.values(), *(r["text"] for r in records)])
    assert len(val) > 1 and (info.train.documents, info.val.documents) == (len(train) - 1, len(val) - 1)


def test_folder_validation_is_a_tenth_of_the_bytes_in_whole_files(tmp_path):
    write_tree(tmp_path, {f"{i:02d}.txt": f"file {i}\n" * (50 + i) for i in range(60)})
    corpus = Corpus(tmp_path)
    val_bytes = sum(f.size for f in corpus.files if f.rel in corpus.val_files)
    assert 0.08 * corpus.total_bytes < val_bytes <= 0.1 * corpus.total_bytes
    assert Corpus(tmp_path).val_files == corpus.val_files  # the same every time
    assert corpus.val_files != {f.rel for f in corpus.files[-len(corpus.val_files):]}  # not simply the last files


def test_folder_of_one_file_splits_it_like_a_single_file(tokenizer, tmp_path):
    write_tree(tmp_path / "corpus", {"only.txt": SAMPLE, "logo.png": b"\x89PNG\x00"})
    prepare_corpus(tmp_path / "corpus", tokenizer, tmp_path / "data", block_size=16)
    assert tokens_text(tokenizer, tmp_path / "data", "val") == SAMPLE[int(len(SAMPLE) * 0.9):] + EOT


def test_jsonl_records_are_documents(tokenizer, tmp_path):
    records = [{"text": f"record {i}: " + SAMPLE[i * 50:(i + 1) * 50], "id": i} for i in range(40)]
    lines = [json.dumps(r) for r in records]
    lines[3:3] = ['{"title": "no text"}', "not json", '["a list"]', '{"text": 5}', ""]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n")
    info = prepare_corpus(path, tokenizer, tmp_path / "data", block_size=16)
    assert (info.stats.documents, info.stats.skipped_lines) == (40, 4)
    val_start, offset, expected_val = int(path.stat().st_size * 0.9), 0, []
    for line in path.read_bytes().splitlines(keepends=True):
        if offset >= val_start and b'"text": "' in line:
            expected_val.append(json.loads(line)["text"])
        offset += len(line)
    assert tokens_text(tokenizer, tmp_path / "data", "val") == "".join(t + EOT for t in expected_val)
    assert tokens_text(tokenizer, tmp_path / "data", "train") == "".join(
        r["text"] + EOT for r in records if r["text"] not in expected_val)


def test_invalid_utf8_is_replaced_and_counted(tokenizer, tmp_path):
    write_tree(tmp_path / "corpus", {
        "latin1.txt": "café crème brûlée\n".encode("latin-1") * 30,  # é è û é: one invalid byte each
        "cut.txt": "truncated €".encode()[:-1] + b"\n" + SAMPLE[:2000].encode(),  # 2 of the 3 bytes of €
        "fine.txt": SAMPLE[2000:4000],
    })
    info = prepare_corpus(tmp_path / "corpus", tokenizer, tmp_path / "data", block_size=16)
    assert (info.stats.replaced_bytes, info.stats.files_with_replaced_bytes) == (4 * 30 + 2, 2)
    decoded = tokens_text(tokenizer, tmp_path / "data", "train") + tokens_text(tokenizer, tmp_path / "data", "val")
    assert "caf\ufffd cr\ufffdme br\ufffdl\ufffde\n" * 30 + EOT in decoded
    assert "truncated \ufffd\n" in decoded


def count_invalid_bytes(data: bytes) -> int:
    invalid, start = 0, 0
    while True:
        try:
            data[start:].decode("utf-8")
            return invalid
        except UnicodeDecodeError as e:
            invalid += e.end - e.start
            start += e.end


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text().map(str.encode) | st.binary(max_size=5) | st.just(b"\n"), max_size=20).map(b"".join),
       st.integers(1, 12))
def test_reading_in_blocks_decodes_like_the_whole_file(tmp_path_factory, data, block_bytes):
    path = tmp_path_factory.mktemp("blocks") / "f.txt"
    path.write_bytes(data)
    stats = CorpusStats()
    assert "".join(read_blocks(path, stats, block_bytes)) == data.decode("utf-8", errors="replace")
    assert stats.replaced_bytes == count_invalid_bytes(data)
    assert stats.bytes_read == len(data)


@pytest.mark.slow
def test_a_file_larger_than_a_block_streams_unchanged(tokenizer, tmp_path):
    long_line = "no newline for a while, é€🙂 " * 100_000  # 3.4 MB: blocks cut between characters
    text = SAMPLE * 50 + long_line + "\n" + SAMPLE * 50
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    blocks = list(read_blocks(path, CorpusStats()))
    assert len(blocks) > 5 and blocks[0].endswith("\n") and "".join(blocks) == text
    blocks = list(read_blocks(path, CorpusStats(), block_bytes=4096))
    assert len(blocks) > 1000 and "".join(blocks) == text
    info = prepare_corpus(path, tokenizer, tmp_path / "data", block_size=256)
    k = int(len(text) * 0.9)
    assert tokens_text(tokenizer, tmp_path / "data", "train") == text[:k] + EOT
    assert tokens_text(tokenizer, tmp_path / "data", "val") == text[k:] + EOT
    assert info.stats.bytes_read == info.train.bytes + info.val.bytes == len(text.encode())


def test_get_batch_is_a_function_of_the_generator_seed(tokenizer, tmp_path):
    (tmp_path / "book.txt").write_text(SAMPLE * 2)
    prepare_corpus(tmp_path / "book.txt", tokenizer, tmp_path / "data", block_size=16, shard_tokens=1000)
    train = TokenShards(tmp_path / "data", "train")
    assert len(train.shards) > 3
    x, y = train.get_batch(8, 16, torch.Generator().manual_seed(7))
    x2, y2 = train.get_batch(8, 16, torch.Generator().manual_seed(7))
    x3, _ = train.get_batch(8, 16, torch.Generator().manual_seed(8))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x, x2) and torch.equal(y, y2) and not torch.equal(x, x3)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert all(shards_holding(train, row) for row in torch.cat([x, y[:, -1:]], dim=1).numpy())


def shards_holding(shards: TokenShards, window: np.ndarray) -> set[int]:
    """The shards that hold this run of tokens, whole."""
    return {i for i, shard in enumerate(shards.shards) if len(shard) >= len(window) and
            (np.lib.stride_tricks.sliding_window_view(shard, len(window)) == window).all(axis=1).any()}


def test_get_batch_draws_from_every_shard(tokenizer, tmp_path):
    (tmp_path / "book.txt").write_text((STDLIB / "textwrap.py").read_text())
    prepare_corpus(tmp_path / "book.txt", tokenizer, tmp_path / "data", block_size=8, shard_tokens=500)
    train = TokenShards(tmp_path / "data", "train")
    g = torch.Generator().manual_seed(0)
    hit = set()
    for _ in range(20):
        x, y = train.get_batch(64, 8, g)
        for row in torch.cat([x, y[:, -1:]], dim=1).numpy():
            holders = shards_holding(train, row)
            assert holders  # no window crosses from one shard into the next
            hit |= holders
    assert len(train.shards) > 5 and hit == set(range(len(train.shards)))


@pytest.mark.parametrize("block_size,batch_size,max_tokens",
                         [(16, 4, None), (7, 3, None), (16, 4, 100), (1000, 2, None)])
def test_iter_windows_scores_every_token_once(tokenizer, tmp_path, block_size, batch_size, max_tokens):
    (tmp_path / "book.txt").write_text(SAMPLE)
    prepare_corpus(tmp_path / "book.txt", tokenizer, tmp_path / "data", block_size=1, shard_tokens=300)
    val = TokenShards(tmp_path / "data", "train")
    everything = torch.from_numpy(val.read(0, val.num_tokens).astype(np.int64))
    batches = list(val.iter_windows(block_size, batch_size, max_tokens))
    assert all(len(x) <= batch_size and x.shape == y.shape and x.shape[1] <= block_size for x, y in batches)
    targets = torch.cat([y.reshape(-1) for _, y in batches])
    inputs = torch.cat([x.reshape(-1) for x, _ in batches])
    n = val.num_tokens - 1 if max_tokens is None else max_tokens
    assert torch.equal(targets, everything[1:n + 1]) and torch.equal(inputs, everything[:n])


def test_corpus_fingerprint_changes_with_the_corpus_only(tmp_path):
    write_tree(tmp_path, {"a.txt": "one", "sub/b.txt": "two"})
    first = corpus_fingerprint(tmp_path)
    assert corpus_fingerprint(tmp_path) == first and len(first) == 16
    write_tree(tmp_path, {".cache/x": "ignored", "__pycache__/y.pyc": "ignored"})
    assert corpus_fingerprint(tmp_path) == first
    write_tree(tmp_path, {"sub/c.txt": "a new book"})
    second = corpus_fingerprint(tmp_path)
    assert second != first
    os.utime(tmp_path / "a.txt", ns=(0, 12345))
    assert corpus_fingerprint(tmp_path) != second


def test_tokenizer_texts_are_train_text_capped(tmp_path):
    text = "line of text\n" * 50_000
    (tmp_path / "book.txt").write_text(text)
    assert "".join(iter_texts_for_tokenizer(tmp_path / "book.txt", max_bytes=10**9)) == text[:int(len(text) * 0.9)]
    capped = list(iter_texts_for_tokenizer(tmp_path / "book.txt", max_bytes=1000))
    assert len(capped) == 1 and text.startswith(capped[0])


def test_preparing_again_replaces_the_folder_and_leaves_nothing_behind(tokenizer, tmp_path):
    (tmp_path / "book.txt").write_text(SAMPLE)
    prepare_corpus(tmp_path / "book.txt", tokenizer, tmp_path / "out" / "data", block_size=8, shard_tokens=100)
    many = len(list((tmp_path / "out" / "data").glob("train_*.bin")))
    prepare_corpus(tmp_path / "book.txt", tokenizer, tmp_path / "out" / "data", block_size=8)
    assert many > 1 and sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == [
        "meta.json", "train_000.bin", "val_000.bin"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["data"]


def test_errors_name_the_problem(tokenizer, tmp_path):
    def fails(path, match, block_size=8):
        with pytest.raises(UserError, match=match):
            prepare_corpus(path, tokenizer, tmp_path / "out" / "data", block_size=block_size)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written

    fails(tmp_path / "nowhere", "no such file or folder: .*nowhere")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "empty has no text to train on$")
    write_tree(tmp_path / "binaries", {"a.bin": b"\x00\x01", "b.dat": b"x\x00y", "c.png": b"png"})
    fails(tmp_path / "binaries", r"binaries has no text to train on \(3 binary or unreadable files skipped\)")
    (tmp_path / "empty.txt").write_text("")
    fails(tmp_path / "empty.txt", "empty.txt has no text to train on")
    (tmp_path / "short.txt").write_text("a few words, not many\n")
    fails(tmp_path / "short.txt", r"corpus too short: \d+ training tokens, need at least 1025", block_size=1024)
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": SAMPLE}) + "\n")
    fails(tmp_path / "one.jsonl", "corpus too short: 0 validation tokens, need at least 2")
    (tmp_path / "notext.jsonl").write_text('{"content": "hi"}\n{"body": "there"}\n')
    fails(tmp_path / "notext.jsonl", 'notext.jsonl has no line with a "text" string')


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_files(tokenizer, tmp_path):
    write_tree(tmp_path / "corpus", {"a.txt": SAMPLE, "b.txt": SAMPLE[:500], "locked.txt": "private"})
    (tmp_path / "corpus" / "locked.txt").chmod(0)
    info = prepare_corpus(tmp_path / "corpus", tokenizer, tmp_path / "data", block_size=8)
    assert info.stats.skipped_unreadable == 1
    with pytest.raises(UserError, match="cannot read .*locked.txt: Permission denied"):
        prepare_corpus(tmp_path / "corpus" / "locked.txt", tokenizer, tmp_path / "data", block_size=8)


def test_what_is_mixed_in_is_all_training_text(tmp_path):
    from nimllm.data import open_corpus
    text = tmp_path / "book.txt"
    text.write_text("It was a dark and stormy night. " * 400)
    mixed = tmp_path / "chats.jsonl"
    mixed.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                                      {"role": "assistant", "content": "hello"}]}) + "\n"
                             for i in range(50)))
    chunks = list(open_corpus([text, mixed]).chunks())
    assert {c.split for c in chunks if c.messages} == {"train"}
    assert {c.split for c in chunks if not c.messages} == {"train", "val"}   # the user's text splits as alone
