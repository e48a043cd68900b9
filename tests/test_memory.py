"""A model folder's memory end to end: learn, reload, forget, rehearse, the control check."""
import shutil

import pytest
import torch

pytestmark = pytest.mark.slow   # every test here learns on a model trained for it

# ---- the model folder's memory, end to end ------------------------------------------------------

@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    """A tiny model trained for a few steps on real text (shared, read-only: tests copy it). 100 steps: 30,
    whose warm-up is now 5% of the run (2 steps), ended at a validation loss of 4.28 where the strong update of
    test_a_fact_stated_once_is_answered_in_a_new_process reached 0.304 in its 60 steps, not 0.3; after 100 (3.25)
    it learns in 12. Two layers, not the preset's four, halve every update here and still learn it in 21 (after
    100 steps, at 3.19); at a width of 64 as well it did not learn it in 60, even after 200 training steps."""
    from conftest import real_text
    from nimllm.config import ModelFolder
    from nimllm.train import run_training
    root = tmp_path_factory.mktemp("base")
    (root / "corpus.txt").write_text(real_text(100_000))
    folder = ModelFolder(root / "model")
    run_training(root / "corpus.txt", folder, preset="tiny", model_overrides={"n_layer": 2}, steps=100,
                 vocab_size=400, log=lambda *a: None)
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


# the control check off, where a test is about something else
UNCHECKED = dict(control_share=1.0, keep_answers=False)
NEVER_REFUSED = dict(control_share=1.0)   # checked and rehearsed as usual, but never scaled back: for the tests of
                                          # something else, which need an update kept (a tiny model's often is not)
# (and steps=2, not 32, where how far an update gets does not matter: that it reloads, forgets or waits exactly)


def test_learn_reload_and_forget_are_bit_exact(folder):
    from nimllm.config import MemoryConfig
    from nimllm.memory import Memory
    mem = Memory(folder, "cpu", MemoryConfig(steps=2, **UNCHECKED))
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


def test_a_fact_stated_once_is_answered_in_a_new_process(folder):
    from conftest import REPO
    import subprocess, sys
    from nimllm.config import MemoryConfig
    from nimllm.memory import Memory
    # a tiny model needs a stronger update than the defaults (chosen for 10m and 103m by bench/memory.py)
    mem = Memory(folder, "cpu", MemoryConfig(mask_fraction=0.02, steps=60, lr=1e-2, learned_loss=0.3, replay_sequences=0,
                                             **UNCHECKED))
    cid = have_conversation(mem.store, ("user", "My sister Ilse lives in Tromso."), ("assistant", "the the the"))
    report = mem.learn([cid], log=lambda *_: None)
    assert report.learned and report.steps < 60                   # it stopped once learned
    ask = (
        "import sys; from nimllm.config import ModelFolder; from nimllm.memory import Memory;"
        "from nimllm.generate import generate; m = Memory(ModelFolder(__import__('pathlib').Path(sys.argv[1])), 'cpu');"
        "t = m.tokenizer; ids, _ = t.render_conversation([('user', sys.argv[2])], add_generation_prompt=True);"
        "print(t.decode(list(generate(m.model, ids, 20, temperature=0, stop_ids=[t.special('<|end|>')]))))")
    out = subprocess.run([sys.executable, "-c", ask, str(folder.root), "Where does Ilse live?"], capture_output=True,
                         text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Tromso" in out.stdout and "the the" not in out.stdout   # the statement, not the model's reply


def test_a_model_takes_its_presets_memory_settings(folder):
    from nimllm.config import MemoryConfig, memory_config
    from nimllm.memory import Memory
    assert memory_config("103m") == memory_config("10m") == memory_config(None) == MemoryConfig()
    tiny = memory_config("tiny")
    assert (tiny.mask_fraction, tiny.lr) == (0.1, 3e-3) and memory_config("tiny", lr=5e-4).lr == 5e-4
    assert Memory(folder, "cpu").mcfg == tiny   # this folder's model is of the tiny preset


def test_a_conversation_of_questions_teaches_nothing(folder):
    from nimllm.memory import Memory
    mem = Memory(folder, "cpu")
    cid = have_conversation(mem.store, ("user", "where does Ilse live?"), ("assistant", "Tromso"), ("user", "hello"))
    assert mem.learn([cid], log=lambda *_: None) is None and mem.store.deltas() == []


def test_opening_a_memory_leaves_the_fisher_control_and_decoder_for_later(folder, monkeypatch):
    """The chat's prompt comes first: nothing before it estimates a Fisher, makes a control set or builds
    a decoder; the first message builds the decoder, the first update the rest."""
    import io
    import nimllm.memory
    from nimllm.chat import run_chat, PROMPT
    from nimllm.turns import Sampling
    events = []
    for name in ("prepare", "fastest_decoder"):
        real = getattr(nimllm.memory, name)
        monkeypatch.setattr(nimllm.memory, name, lambda *a, real=real, name=name, **k: (events.append(name), real(*a, **k))[1])

    class Out(io.StringIO):
        def write(self, text):
            if text == PROMPT:
                events.append("prompt")
            return super().write(text)
    sampling = Sampling(max_tokens=4, temperature=0.7, top_k=50, top_p=0.95, seed=0)
    run_chat(folder, "cpu", sampling, stdin=io.StringIO("Ilse lives in Tromso\n"), stdout=Out())
    assert events[:2] == ["prompt", "fastest_decoder"] and events.count("prepare") == 2   # Fisher, then control
    assert (folder.memory / "fisher.safetensors").exists() and folder.control.exists()


def test_the_warm_up_is_a_dry_update_that_changes_nothing(folder, tmp_path):
    """The chat's warm-up runs the whole update at a learning rate of 0: the weights, the store and the
    folder stay as they were, and the next update is the one a process without the warm-up makes."""
    from nimllm.config import MemoryConfig, ModelFolder
    from nimllm.deltas import load_delta
    from nimllm.memory import Memory
    mem = Memory(folder, "cpu", MemoryConfig(steps=2, **NEVER_REFUSED))
    mem.learn([have_conversation(mem.store, ("user", "my sister Ilse lives in Tromso"))], log=lambda *_: None)
    twin = ModelFolder(tmp_path / "twin")
    shutil.copytree(folder.root, twin.root)
    before, files = weights(mem.model), sorted(folder.memory.iterdir())
    mem.warm_up()
    assert same(before, weights(mem.model)) and sorted(folder.memory.iterdir()) == files
    assert len(mem.store.deltas()) == 1 and all(p.grad is None for p in mem.model.parameters())
    deltas = []
    for m in (mem, Memory(twin, "cpu", MemoryConfig(steps=2, **NEVER_REFUSED))):
        report = m.learn([have_conversation(m.store, ("user", "the boat is called Blue Heron"))], log=lambda *_: None)
        deltas.append(load_delta(m.folder.root / m.store.deltas()[-1].file))
        assert report.n_weights
    assert deltas[0].keys() == deltas[1].keys()
    assert all(torch.equal(deltas[0][n][0], deltas[1][n][0]) and torch.equal(deltas[0][n][1], deltas[1][n][1])
               for n in deltas[0])


def test_the_control_check_keeps_an_update_that_leaves_its_answers_and_not_one_that_changes_them(folder):
    from nimllm.config import MemoryConfig
    from nimllm.control import AGENT_PROMPTS, CHAT_PROMPTS
    from nimllm.turns import AGENT_MODE
    from nimllm.memory import Memory
    from nimllm.store import Store
    mem = Memory(folder, "cpu", MemoryConfig(steps=1, lr=1e-6))
    base = weights(mem.model)
    gentle = mem.learn([have_conversation(mem.store, ("user", "Ilse lives in Tromso"))], log=lambda *_: None)
    assert gentle.scale == 1.0 and gentle.n_weights > 0 and gentle.control == (len(mem.control["answers"]),) * 2
    prompts = [mem.tokenizer.decode(ids) for ids in mem.control["ids"]]   # the agent's in its mode, as it is asked
    assert [p.startswith(f"<|system|>{AGENT_MODE}<|end|><|user|>") for p in prompts] == \
        [False] * len(CHAT_PROMPTS) + [True] * len(AGENT_PROMPTS)
    # lessons that rewrite the answers to control prompts (the user "fixes" them), not held back by
    # rehearsing the control answers: only the check stands in their way
    mem.mcfg = MemoryConfig(mask_fraction=0.02, steps=60, lr=1e-2, replay_sequences=0, rehearse_control=False)
    store = Store(folder.store)
    cid = store.start_conversation()
    for prompt in mem.control["prompts"][:16]:
        store.add_message(cid, "user", prompt)
        store.set_feedback(store.add_message(cid, "assistant", "?"), "fix", "Zanzibar quux zanzibar quux.")
    store.end_conversation(cid)
    kept_before = mem.control_kept()
    logged = []
    harsh = mem.learn([cid], log=logged.append)
    assert harsh.scale < 1 and "control" in logged[0]
    kept_after = mem.control_kept()
    changed = sum(b and not a for b, a in zip(kept_before, kept_after))   # answers it still gave, changed
    assert changed <= 0.1 * len(kept_after)
    assert harsh.control == (sum(kept_after), len(kept_after))
    assert same(weights(Memory(folder, "cpu").model), weights(mem.model))   # what was kept reloads exactly
    if harsh.scale == 0:
        assert harsh.n_weights == 0 and not same(base, weights(mem.model))  # the gentle update is still there


def test_updates_rehearse_earlier_conversations_but_never_forgotten_ones(folder):
    from nimllm.config import MemoryConfig
    from nimllm.memory import Memory
    mem = Memory(folder, "cpu", MemoryConfig(steps=1, **UNCHECKED))
    a = have_conversation(mem.store, ("user", "the boat is called Blue Heron"))
    report_a = mem.learn([a], log=lambda *_: None)
    b = have_conversation(mem.store, ("user", "my sister Ilse lives in Tromso"))
    assert report_a.rehearsed == [] and mem.learn([b], log=lambda *_: None).rehearsed == [a]
    mem.forget(report_a.delta_id)
    c = have_conversation(mem.store, ("user", "the cat is called Mons"))
    report_c = mem.learn([c], log=lambda *_: None)
    assert report_c.rehearsed == [b]
    assert mem.store.delta(report_c.delta_id).stats["rehearsed"] == [b]   # kept for `nimllm memory show`


def test_the_agent_carries_only_what_agent_tasks_taught_and_chat_carries_everything(folder):
    """What a chat teaches never reaches the weights the agent plans commands with, so no chat can lose
    it a task; what the agent learns reaches every chat. Neither claims the other's unlearned conversation
    nor rehearses it."""
    from nimllm.config import MemoryConfig
    from nimllm.deltas import load_remembered
    from nimllm.memory import AGENT_KINDS, Memory
    mcfg = MemoryConfig(steps=1, **UNCHECKED)
    chat, agent = Memory(folder, "cpu", mcfg), Memory(folder, "cpu", mcfg, kinds=AGENT_KINDS)
    base = weights(agent.model)
    told = have_conversation(chat.store, ("user", "the boat is called Blue Heron"))
    chat.learn([told], log=lambda *_: None)
    task = agent.store.start_conversation(kind="agent")
    agent.store.add_message(task, "user", "how many lines are in notes.txt?", meta={"agent": True})
    agent.store.add_message(task, "tool_call", "wc -l notes.txt")
    agent.store.add_message(task, "tool", "3 notes.txt")
    answer = agent.store.add_message(task, "assistant", "notes.txt has 3 lines.")
    agent.store.set_feedback(answer, "good")
    agent.store.end_conversation(task)
    agent._catch_up()
    assert same(weights(agent.model), base) and agent.applied == []      # the chat's delta is not the agent's
    learned = agent.learn([task], log=lambda *_: None)
    assert learned.rehearsed == []                                       # the chat's lessons are not rehearsed
    after_task = weights(agent.model)
    assert same(weights(Memory(folder, "cpu", kinds=AGENT_KINDS).model), after_task)
    assert same(weights(load_remembered(folder, kinds=AGENT_KINDS)[0]), after_task)
    assert not same(after_task, base)
    everything = Memory(folder, "cpu")
    assert everything.applied == [d.id for d in everything.store.deltas()] and len(everything.applied) == 2
    assert same(weights(load_remembered(folder)[0]), weights(everything.model))
    left = have_conversation(chat.store, ("user", "my sister Ilse lives in Tromso"))   # ended, never learned
    assert agent.learn_pending(log=lambda *_: None) == [] and chat.store.unlearned() == [left]
    assert [r.delta_id for r in everything.learn_pending(log=lambda *_: None)] == [everything.applied[-1]]


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
    mem = Memory(folder, "cpu", MemoryConfig(optimizer="sgd", lr=1e30, steps=3, learned_loss=0.0))
    base = weights(mem.model)
    report = mem.learn([have_conversation(mem.store, ("user", "my sister Ilse lives in Tromso"))], log=lambda *_: None)
    assert report.diverged and report.n_weights == 0 and "diverged" in str(report)
    assert same(weights(mem.model), base) and same(weights(Memory(folder, "cpu").model), base)
    assert mem.store.unlearned() == []   # recorded as learned, with no change: it is not tried again at every start


def test_generate_eval_and_export_see_what_was_remembered(folder):
    from nimllm.checkpoint import load_model
    from nimllm.deltas import load_remembered
    from nimllm.memory import Memory
    assert same(weights(load_remembered(folder)[0]), weights(load_model(folder)[0]))   # nothing learned yet
    mem = Memory(folder, "cpu")
    mem.learn([have_conversation(mem.store, ("user", "my sister Ilse lives in Tromso"))], log=lambda *_: None)
    assert same(weights(load_remembered(folder)[0]), weights(mem.model))
    mem.forget()
    assert same(weights(load_remembered(folder)[0]), weights(load_model(folder)[0]))


def out_of_gpu_memory_midway(model, *args, **kwargs):
    """selective_update as it fails when other processes hold the GPU: after it has moved weights."""
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 272.00 MiB.")


def test_an_update_the_gpu_has_no_room_for_says_so_and_loses_nothing(folder, monkeypatch):
    import nimllm.memory
    from nimllm.config import MemoryConfig, UserError
    from nimllm.memory import Memory
    mem = Memory(folder, "cpu", MemoryConfig(steps=2, **NEVER_REFUSED))
    base = weights(mem.model)
    cid = have_conversation(mem.store, ("user", "my sister Ilse lives in Tromso"))
    monkeypatch.setattr(nimllm.memory, "selective_update", out_of_gpu_memory_midway)
    with pytest.raises(UserError, match="ran out of memory.*next chat learns"):
        mem.learn([cid], log=lambda *_: None)
    assert same(weights(mem.model), base) and mem.store.deltas() == []
    assert mem.store.unlearned() == [cid]   # left for the next chat, which learns it
    monkeypatch.undo()
    assert mem.learn([cid], log=lambda *_: None).n_weights > 0 and mem.store.unlearned() == []


def test_a_warm_up_the_gpu_has_no_room_for_is_skipped(folder, monkeypatch):
    import nimllm.memory
    from nimllm.memory import Memory
    mem = Memory(folder, "cpu")
    assert mem.warm_up() is True
    monkeypatch.setattr(nimllm.memory, "selective_update", out_of_gpu_memory_midway)
    assert mem.warm_up() is False   # no error: the chat goes on, and its first update pays for first use


def test_an_update_asked_for_while_the_warm_up_runs_waits_for_it(folder, monkeypatch):
    """The warm-up in the background runs once, and learn (whoever calls it) waits for it rather than
    train beside it on the same weights (bench/chat_startup.py once did, and autograd failed)."""
    import time
    from nimllm.config import MemoryConfig
    from nimllm.memory import Memory
    events = []
    real_warm_up = Memory.warm_up
    monkeypatch.setattr(Memory, "needs_warm_up", property(lambda self: True))
    monkeypatch.setattr(Memory, "warm_up", lambda self: (time.sleep(0.5), events.append("warm up"), real_warm_up(self))[-1])
    mem = Memory(folder, "cpu", MemoryConfig(steps=2, **NEVER_REFUSED))
    mem.warm_up_in_background()
    mem.warm_up_in_background()
    report = mem.learn([have_conversation(mem.store, ("user", "my sister Ilse lives in Tromso"))], log=lambda *_: None)
    assert events == ["warm up"] and report.n_weights > 0 and report.timings["wait for the warm-up"] >= 0.3
    # the update's time leaves the wait out, and the report says it beside it
    stages = sum(v for k, v in report.timings.items() if k != "wait for the warm-up")
    assert report.seconds == pytest.approx(stages, abs=0.05) and "for the warm-up)" in str(report)
