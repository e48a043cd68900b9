import copy

import pytest
import torch

from nimllm.config import MemoryConfig, ModelConfig
from nimllm.memory import apply_delta, apply_top_k_mask, ewc_penalty, fisher_diagonal, selective_update
from nimllm.model import GPT

CFG = ModelConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=4, block_size=16)


def test_top_k_mask_keeps_exactly_the_largest_fraction():
    torch.manual_seed(0)
    grads = {"a": torch.randn(100, 30), "b": torch.randn(1000), "c": torch.randn(7)}
    total = sum(g.numel() for g in grads.values())
    for fraction in (0.001, 0.01, 0.2):
        masks = apply_top_k_mask(grads, fraction)
        chosen = sum(len(i) for i in masks.values())
        assert chosen == round(fraction * total)
        picked = torch.cat([grads[n].flatten()[i].abs() for n, i in masks.items()])
        left = torch.cat([g.flatten().abs() for g in grads.values()])
        assert picked.min() >= left.sort(descending=True).values[chosen]


def test_ewc_penalty_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=8, n_layer=1, n_embd=4, n_head=1, block_size=4)).double()
    anchor = {n: p.detach() + 0.1 * torch.randn_like(p) for n, p in model.named_parameters()}
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    params = [p for p in model.parameters()]
    assert torch.autograd.gradcheck(lambda *_: ewc_penalty(model, anchor, fisher, 3.0), params)
    # and its closed form: lambda * F * (w - anchor)
    model.zero_grad()
    ewc_penalty(model, anchor, fisher, 3.0).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, 3.0 * fisher[n] * (p.detach() - anchor[n]))


def test_fisher_is_positive_and_normalised():
    torch.manual_seed(0)
    model = GPT(CFG)
    fisher = fisher_diagonal(model, [torch.randint(0, 64, (17,)) for _ in range(4)])
    values = torch.cat([f.flatten() for f in fisher.values()])
    assert (values >= 0).all() and values.mean().item() == pytest.approx(1.0, rel=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_selective_update_moves_only_the_mask_and_lowers_the_loss():
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    before = copy.deepcopy(model.state_dict())
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    fisher = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    x, y = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    delta, report = selective_update(model, x, y, anchor, fisher, MemoryConfig(mask_fraction=0.02, steps=10, lr=1e-2))
    total = sum(p.numel() for p in model.parameters())
    assert report.n_weights == round(0.02 * total)
    changed = sum((model.state_dict()[n] != before[n]).sum().item() for n in before)
    assert 0 < changed <= report.n_weights
    assert report.loss_after < report.loss_before
    # the live weights are exactly base + delta, added the way a reload adds it
    rebuilt = GPT(CFG)
    rebuilt.load_state_dict(before)
    apply_delta(rebuilt, delta)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()))


# ---- the model folder's memory, end to end ------------------------------------------------------

@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    """A tiny model trained for a few steps on real text (shared, read-only: tests copy it)."""
    from conftest import real_text
    from nimllm.config import ModelFolder
    from nimllm.train import run_training
    root = tmp_path_factory.mktemp("base")
    (root / "corpus.txt").write_text(real_text(100_000))
    folder = ModelFolder(root / "model")
    run_training(root / "corpus.txt", folder, preset="tiny", steps=30, vocab_size=400, log=lambda *a: None)
    return folder


@pytest.fixture
def folder(trained_folder, tmp_path):
    import shutil
    from nimllm.config import ModelFolder
    shutil.copytree(trained_folder.root, tmp_path / "model")
    return ModelFolder(tmp_path / "model")


def weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def have_conversation(store, *turns) -> int:
    cid = store.start_conversation()
    for role, text in turns:
        store.add_message(cid, role, text)
    store.end_conversation(cid)
    return cid


def test_learn_reload_and_forget_are_bit_exact(folder):
    from nimllm.memory import Memory
    mem = Memory(folder, "cpu")
    base = weights(mem.model)
    a = have_conversation(mem.store, ("user", "my sister Ilse lives in Tromso"), ("assistant", "Ilse lives in Tromso."))
    report_a = mem.learn([a], log=lambda *_: None)
    after_a = weights(mem.model)
    assert report_a.n_weights == round(0.01 * mem.model.num_params()) and not same(base, after_a)
    b = have_conversation(mem.store, ("user", "the boat is called Blue Heron"))
    report_b = mem.learn([b], log=lambda *_: None)
    after_b = weights(mem.model)

    assert same(weights(Memory(folder, "cpu").model), after_b)    # a new process sees base + both deltas
    mem.forget(report_b.delta_id)
    assert same(weights(mem.model), after_a)                      # forgetting the last one: bit for bit
    assert same(weights(Memory(folder, "cpu").model), after_a)
    mem.forget()
    assert same(weights(mem.model), base)
    assert not list(folder.memory.glob("delta-*"))
    assert mem.store.unlearned() == []                            # forgotten is not relearned


def test_feedback_shapes_what_is_learned(folder):
    from nimllm.memory import conversation_messages
    from nimllm.store import Store
    store = Store(folder.store)
    cid = have_conversation(store, ("user", "q1"), ("assistant", "wrong"), ("user", "q2"), ("assistant", "meh"))
    msgs = store.messages(cid)
    store.set_feedback(msgs[1].id, "bad")
    store.set_feedback(msgs[3].id, "fix", "better")
    assert conversation_messages(store.messages(cid)) == [("user", "q1"), ("user", "q2"), ("assistant", "better")]


def test_a_taught_fact_is_recalled_in_a_new_process(folder):
    from conftest import REPO
    import subprocess, sys
    from nimllm.config import MemoryConfig
    from nimllm.memory import Memory
    # a tiny model needs a stronger update than the defaults (chosen for 10m and 103m by bench/memory.py)
    mem = Memory(folder, "cpu", MemoryConfig(mask_fraction=0.02, steps=30, lr=1e-2, ewc_lambda=0.01, replay_sequences=0))
    cid = have_conversation(mem.store, ("user", "where does Ilse live?"), ("assistant", "Ilse lives in Tromso."))
    mem.learn([cid], log=lambda *_: None)
    ask = (
        "import sys; from nimllm.config import ModelFolder; from nimllm.memory import Memory;"
        "from nimllm.generate import generate; m = Memory(ModelFolder(__import__('pathlib').Path(sys.argv[1])), 'cpu');"
        "t = m.tokenizer; ids, _ = t.render_conversation([('user', 'where does Ilse live?')], add_generation_prompt=True);"
        "print(t.decode(list(generate(m.model, ids, 20, temperature=0, stop_ids=[t.special('<|end|>')]))))")
    out = subprocess.run([sys.executable, "-c", ask, str(folder.root)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Tromso" in out.stdout


def test_updates_rehearse_earlier_conversations_but_never_forgotten_ones(folder):
    from nimllm.config import MemoryConfig
    from nimllm.memory import Memory
    mem = Memory(folder, "cpu", MemoryConfig(steps=1))
    a = have_conversation(mem.store, ("user", "the boat is called Blue Heron"))
    report_a = mem.learn([a], log=lambda *_: None)
    b = have_conversation(mem.store, ("user", "my sister Ilse lives in Tromso"))
    assert report_a.rehearsed == [] and mem.learn([b], log=lambda *_: None).rehearsed == [a]
    mem.forget(report_a.delta_id)
    c = have_conversation(mem.store, ("user", "the cat is called Mons"))
    report_c = mem.learn([c], log=lambda *_: None)
    assert report_c.rehearsed == [b]
    assert mem.store.delta(report_c.delta_id).stats["rehearsed"] == [b]   # kept for `nimllm memory show`


def test_the_decoder_follows_the_weights_through_learning_and_forgetting(folder):
    from nimllm.generate import generate
    from nimllm.memory import Memory
    mem = Memory(folder, "cpu")
    prompt = mem.tokenizer.encode("my sister")

    def greedy(decoder=None):
        return list(generate(mem.model, prompt, 12, temperature=0, decoder=decoder, use_cache=decoder is not None))

    before = mem.decoder()
    assert mem.decoder() is before and greedy(before) == greedy()
    mem.learn([have_conversation(mem.store, ("user", "my sister Ilse lives in Tromso"))], log=lambda *_: None)
    after = mem.decoder()
    assert after is not before and greedy(after) == greedy()   # a stale copy would decode the old weights
    mem.forget()
    assert mem.decoder() is not after and greedy(mem.decoder()) == greedy()


def test_an_update_that_diverges_changes_nothing(folder):
    from nimllm.config import MemoryConfig
    from nimllm.memory import Memory
    mem = Memory(folder, "cpu", MemoryConfig(optimizer="sgd", lr=1e30, steps=3))
    base = weights(mem.model)
    report = mem.learn([have_conversation(mem.store, ("user", "my sister Ilse lives in Tromso"))], log=lambda *_: None)
    assert report.diverged and report.n_weights == 0 and "diverged" in str(report)
    assert same(weights(mem.model), base) and same(weights(Memory(folder, "cpu").model), base)
    assert mem.store.unlearned() == []   # recorded as learned, with no change: it is not tried again at every start


def test_a_task_learns_the_commands_and_answer_but_not_the_request(folder):
    from nimllm.memory import training_sequences
    from nimllm.tokenizer import Tokenizer
    tok = Tokenizer.load(folder.tokenizer)

    def learned_text(messages):
        (x, y), = training_sequences(tok, messages, 512, text="conversation")
        return tok.decode([t for t in y if t >= 0])

    task = learned_text([("user", "count the .txt files"), ("tool_call", "ls *.txt | wc -l"), ("tool", "3"),
                         ("assistant", "There are 3.")])
    assert "count the" not in task and "ls *.txt | wc -l" in task and "There are 3." in task
    assert "count the .txt files" in learned_text([("user", "count the .txt files"), ("assistant", "Sure.")])


def test_generate_eval_and_export_see_what_was_remembered(folder):
    from nimllm.checkpoint import load_model
    from nimllm.memory import Memory, load_remembered
    assert same(weights(load_remembered(folder)[0]), weights(load_model(folder)[0]))   # nothing learned yet
    mem = Memory(folder, "cpu")
    mem.learn([have_conversation(mem.store, ("user", "my sister Ilse lives in Tromso"))], log=lambda *_: None)
    assert same(weights(load_remembered(folder)[0]), weights(mem.model))
    mem.forget()
    assert same(weights(load_remembered(folder)[0]), weights(load_model(folder)[0]))
