import pytest
import torch

from nimllm.config import ModelConfig
from nimllm.generate import (BatchScheduler, Decoder, KVCache, Request, generate, generate_batch, sample_next,
                             with_weights)
from nimllm.model import GPT


def small_model(seed=0, block_size=24, **changes) -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=40, n_layer=2, n_embd=32, n_head=4, block_size=block_size, **changes)).eval()
    # larger weights than the init so the distribution is peaked and greedy choices are not ties
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0 if p.dim() > 1 else 1.0)
    return model


@torch.no_grad()
@pytest.mark.parametrize("changes", [{}, {"qk_norm": True, "activation": "relu2"}])
def test_cached_forward_matches_full_forward_in_chunks(changes):
    model = small_model(**changes)
    idx = torch.randint(0, 40, (3, 20))
    full = model(idx)
    cache = KVCache(model, batch_size=3)
    pieces = [model(idx[:, a:b], cache=cache) for a, b in [(0, 7), (7, 8), (8, 15), (15, 20)]]
    assert cache.pos == 20
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


@torch.no_grad()
def test_decoder_prefill_and_steps_at_own_positions_give_the_full_forward_logits():
    """Rows prefilled with prompts of different lengths, then stepped together, each at its own
    position: every row's logits are those of the plain forward over its whole sequence."""
    model = small_model(block_size=24)
    g = torch.Generator().manual_seed(4)
    sequences = [torch.randint(0, 40, (n,), generator=g).tolist() for n in (24, 5, 17)]
    lengths = [3, 1, 12]   # prefilled; the rest is fed a token per step (a row that has run out sits at 0)
    decoder = Decoder(model, batch_size=3)
    for row, (seq, n) in enumerate(zip(sequences, lengths)):
        assert torch.allclose(decoder.prefill(row, seq[:n]), model(torch.tensor([seq[:n]]))[0, -1], atol=1e-5)
    for t in range(max(map(len, sequences)) - min(lengths)):
        feeding = [lengths[r] + t < len(seq) for r, seq in enumerate(sequences)]
        positions = [lengths[r] + t if feeding[r] else 0 for r in range(3)]
        tokens = torch.tensor([seq[positions[r]] if feeding[r] else 0 for r, seq in enumerate(sequences)])
        logits = decoder.step(tokens, positions)
        for r, seq in enumerate(sequences):
            if feeding[r]:
                full = model(torch.tensor([seq[:positions[r] + 1]]))[0, -1]
                assert torch.allclose(logits[r], full, atol=1e-5), (r, t)


@pytest.mark.parametrize("max_new", [10, 60])  # 60 runs past the context of 24 several times
def test_generation_with_cache_equals_without(max_new):
    model = small_model(block_size=24)
    prompt = torch.randint(0, 40, (9,)).tolist()
    with_cache = list(generate(model, prompt, max_new, temperature=0, use_cache=True))
    without = list(generate(model, prompt, max_new, temperature=0, use_cache=False))
    assert len(with_cache) == max_new
    assert with_cache == without


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    model = small_model()
    prompt = [1, 2, 3]
    a = list(generate(model, prompt, 30, temperature=1.0, seed=7))
    b = list(generate(model, prompt, 30, temperature=1.0, seed=7))
    c = list(generate(model, prompt, 30, temperature=1.0, seed=8))
    assert a == b and a != c


def test_stop_ids_end_generation():
    model = small_model()
    prompt = [5, 6]
    free = list(generate(model, prompt, 20, temperature=0))
    stop = free[4]
    stopped = list(generate(model, prompt, 20, temperature=0, stop_ids=[stop]))
    assert stopped == free[:free.index(stop)]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_banned_id_is_never_drawn_on_any_path(temperature):
    model = small_model()
    prompt = [5, 6]
    free = list(generate(model, prompt, 20, temperature=temperature, seed=3))
    banned = {free[0], free[4]}   # the tokens it did choose
    cached = list(generate(model, prompt, 20, temperature=temperature, seed=3, banned_ids=banned))
    plain = list(generate(model, prompt, 20, temperature=temperature, seed=3, banned_ids=banned, use_cache=False))
    batched = [row[0] for row in generate_batch(Decoder(model, 2), [prompt, prompt], 20, temperature, seed=3,
                                                  banned_ids=banned)]
    assert len(cached) == 20 and not banned & set(cached) and cached[0] != free[0]
    assert batched == cached
    if temperature == 0:   # greedy: the plain path picks the same; sampled paths draw from their own generators
        assert plain == cached
    assert not banned & set(plain)


def test_top_k_and_top_p_restrict_choices():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[5.0, 4.0, 3.0, -10.0, -10.0]])
    picks = {int(sample_next(logits, 1.0, top_k=2, generator=g)) for _ in range(200)}
    assert picks == {0, 1}
    # p(0) ~ 0.67, p(1) ~ 0.24: top_p 0.5 keeps only token 0, 0.8 keeps 0 and 1
    assert {int(sample_next(logits, 1.0, top_p=0.5, generator=g)) for _ in range(100)} == {0}
    assert {int(sample_next(logits, 1.0, top_p=0.8, generator=g)) for _ in range(300)} == {0, 1}
    assert int(sample_next(logits, 0.0)) == 0


def collect(steps) -> list[list[int]]:
    """generate_batch's per-step tokens, as one list per sequence."""
    rows = None
    for tokens in steps:
        rows = rows or [[] for _ in tokens]
        for row, token in zip(rows, tokens):
            if token is not None:
                row.append(token)
    return rows


@pytest.mark.slow
def test_batched_decoding_equals_each_sequence_decoded_plainly():
    model = small_model(block_size=24)
    g = torch.Generator().manual_seed(1)
    # prompts shorter than, equal to and longer than the context; 50 tokens take every one past it
    prompts = [torch.randint(0, 40, (n,), generator=g).tolist() for n in (1, 9, 24, 31)]
    plain = [list(generate(model, p, 50, temperature=0, use_cache=False)) for p in prompts]
    assert collect(generate_batch(Decoder(model, batch_size=4), prompts, 50, temperature=0)) == plain
    stop = plain[1][7]
    stopped = collect(generate_batch(Decoder(model, batch_size=4), prompts, 50, temperature=0, stop_ids=[stop]))
    assert stopped == [p[:p.index(stop)] if stop in p else p for p in plain]


def assert_greedy(model, prompt, tokens, tie=0.0):
    """`tokens` are the model's greedy continuation of `prompt` on the plain path (a full forward
    over the sequence for each token), except at a near-tie: where the plain path's two best logits
    are within `tie` (rounding in bf16 can order them either way), either may come, and the
    sequences may part from there. Stays inside the context."""
    ids = list(prompt)
    for token in tokens:
        with torch.no_grad():
            best = model(torch.tensor([ids], device=next(model.parameters()).device))[0, -1].float().topk(2)
        if token != best.indices[0]:
            assert token == best.indices[1] and best.values[0] - best.values[1] <= tie, (ids, token, best)
            return
        ids.append(token)


@pytest.mark.parametrize("weights, tolerance", [("float32", 1e-5), ("bfloat16", 3e-2), ("float16", 2e-3),
                                                ("int8", 3e-2)])
def test_every_weight_format_decodes_like_its_plain_path_and_stays_close(weights, tolerance):
    model = small_model(block_size=64)
    fast = with_weights(model, weights)
    idx = torch.randint(0, 40, (2, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference, logits = model(idx), fast(idx).float()
    assert ((logits - reference).norm() / reference.norm()).item() < tolerance
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6]]
    decoded = collect(generate_batch(Decoder(model, batch_size=2, weights=weights), prompts, 50, temperature=0))
    tie = 0 if weights in ("float32", "float16") else 2 * tolerance * reference.abs().max().item()
    for prompt, tokens in zip(prompts, decoded):
        assert len(tokens) == 50
        assert_greedy(fast, prompt, tokens, tie)


def test_batched_sampling_gives_each_row_what_generate_gives_it_alone():
    """The batch runs through the BatchScheduler: row r samples with seed + r as `generate` would."""
    model = small_model()
    prompts = [[1, 2], [3], [4, 5, 6]]
    alone = [list(generate(model, p, 20, temperature=0.8, top_p=0.9, seed=11 + r)) for r, p in enumerate(prompts)]
    assert collect(generate_batch(Decoder(model, 3), prompts, 20, temperature=0.8, top_p=0.9, seed=11)) == alone


def test_a_decode_computes_no_step_past_its_length_and_raises_a_rows_failure():
    model = small_model()
    decoder = Decoder(model, batch_size=1)
    steps, step = [], decoder.step
    decoder.step = lambda tokens, positions: steps.append(positions) or step(tokens, positions)
    assert len(list(generate(model, [1, 2, 3], 10, temperature=0, decoder=decoder))) == 10
    assert len(steps) == 9   # the prefill gives the first token, a step each of the others
    with pytest.raises(IndexError):   # a token outside the vocabulary fails its prefill, as a plain forward
        list(generate(model, [1, 400], 5, decoder=decoder))


def test_seeded_batched_sampling_is_reproducible():
    model = small_model()
    decoder = Decoder(model, batch_size=3)
    a = collect(generate_batch(decoder, [[1], [2], [3]], 20, temperature=1.0, top_k=10, seed=5))
    b = collect(generate_batch(decoder, [[1], [2], [3]], 20, temperature=1.0, top_k=10, seed=5))
    assert a == b and len(set(map(tuple, a))) == 3
    with pytest.raises(ValueError):
        next(generate_batch(decoder, [[1]] * 4, 5))


# ---- the BatchScheduler: continuous batching on token ids ------------------------------------------

@pytest.mark.slow
def test_batch_scheduler_gives_each_request_what_generate_gives_it_alone():
    """Requests arrive while others decode, greedy and seeded ones mixed, some longer than the context
    (24): each gets generate's tokens for its prompt alone; a cancelled one ends and frees its row."""
    import random

    net = small_model()
    rng = random.Random(0)
    asks = [dict(prompt=[rng.randrange(40) for _ in range(rng.randrange(1, 30))], max_new_tokens=rng.randrange(1, 50),
                 temperature=0.9 * (i % 2), seed=i) for i in range(16)]
    stop = frozenset(list(generate(net, asks[0]["prompt"], 3, temperature=0))[-1:])   # a token some replies write
    for a in asks:
        a["stop_ids"] = stop
    for weights in ("float32", "float16"):
        wanted = [list(generate(net, a["prompt"], a["max_new_tokens"], a["temperature"], seed=a["seed"],
                                stop_ids=a["stop_ids"], decoder=Decoder(net, 1, weights))) for a in asks]
        scheduler = BatchScheduler(Decoder(net, 4, weights))
        got, ends = [[] for _ in asks], [None] * len(asks)

        def emit_to(i):
            return lambda token, reason: got[i].append(token) if reason is None else ends.__setitem__(i, reason)
        requests = [Request(emit=emit_to(i), **a) for i, a in enumerate(asks)]
        endless = Request([1, 2], 10**6, emit_to(len(asks) - 1))   # replaces the last: cancelled mid-way
        requests[-1] = endless
        for i, request in enumerate(requests):
            scheduler.submit(request)
            for _ in range(rng.randrange(4)):
                scheduler.step()
        endless.cancel()
        while scheduler.live or not scheduler.waiting.empty():
            scheduler.step()
        assert got[:-1] == wanted[:-1] and ends[-1] == "cancelled" and ends.count("stop") > 0
        assert all(end in ("stop", "length") for end in ends[:-1]) and scheduler.rows == [None] * 4


def test_a_request_the_engine_cannot_run_fails_alone():
    """Values no API request can carry, given to the scheduler directly while two requests decode: a seed
    past 64 bits (the generator refuses it on admission), a temperature so small that the logits overflow
    (sampling meets inf/nan) and a token outside the vocabulary (its prefill fails). Each ends its own
    request with an error; the two decoding get generate's tokens, and every row is free at the end."""
    net = small_model()
    asks = [dict(prompt=[1, 2, 3], max_new_tokens=30, temperature=0.0),
            dict(prompt=[4, 5], max_new_tokens=30, temperature=0.9, seed=7),
            dict(prompt=[1, 2], max_new_tokens=5, seed=2**64),
            dict(prompt=[1, 2], max_new_tokens=5, temperature=5e-324),
            dict(prompt=[1, 400], max_new_tokens=5)]
    wanted = [list(generate(net, a["prompt"], a["max_new_tokens"], a["temperature"], seed=a.get("seed"),
                            decoder=Decoder(net, 1))) for a in asks[:2]]
    scheduler = BatchScheduler(Decoder(net, 4))   # 4 rows for 5 requests: the last takes a row a failure freed
    got, ends = [[] for _ in asks], [None] * len(asks)

    def emit_to(i):
        return lambda token, reason: got[i].append(token) if reason is None else ends.__setitem__(i, reason)
    requests = [Request(emit=emit_to(i), **a) for i, a in enumerate(asks)]
    for request in requests[:2]:
        scheduler.submit(request)
    for _ in range(3):
        scheduler.step()
    for request in requests[2:]:
        scheduler.submit(request)
    while scheduler.live or not scheduler.waiting.empty():
        scheduler.step()
    assert got[:2] == wanted and ends[:2] == ["length", "length"] and got[2:] == [[], [], []]
    assert [end.split(":")[:2] for end in ends[2:]] == [["error", " ValueError"], ["error", " RuntimeError"],
                                                         ["error", " IndexError"]]
    assert scheduler.rows == [None] * 4
