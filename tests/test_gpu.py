"""CUDA fast paths against the plain path. Skipped without a GPU (CI); run on the H100 with
`python3 -m pytest tests/test_gpu.py`."""
import pytest
import torch

from conftest import run_cli
from test_generate import assert_greedy, collect
from nimllm import checkpoint
from nimllm.config import ModelConfig, ModelFolder, TrainConfig
from nimllm.generate import Decoder, generate, generate_batch, with_weights
from nimllm.model import GPT
from nimllm.optim import build_optimizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CFG = ModelConfig(vocab_size=512, n_layer=2, n_embd=128, n_head=4, block_size=64)


def relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.slow
def test_compiled_bf16_training_step_matches_eager_float32():
    torch.manual_seed(0)
    model = GPT(CFG).cuda()
    x, y = torch.randint(0, 512, (8, 64), device="cuda"), torch.randint(0, 512, (8, 64), device="cuda")
    reference = model(x, y)
    reference.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = compiled(x, y)
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-2)
    for g, p in zip(ref_grads, model.parameters()):
        assert relative_error(p.grad, g) < 3e-2


def test_fused_adamw_matches_foreach():
    torch.manual_seed(0)
    a, b = GPT(CFG).cuda(), GPT(CFG).cuda()
    b.load_state_dict(a.state_dict())
    fused = build_optimizer(a, TrainConfig(), "cuda")
    plain = build_optimizer(b, TrainConfig(), "cpu")          # the non-fused implementation, on the GPU
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for _ in range(3):
        x = torch.randint(0, 512, (4, 64), device="cuda")
        for model, opt in ((a, fused), (b, plain)):
            model(x, x).backward()
            opt.step()
            opt.zero_grad()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5)


def test_generation_with_cache_equals_without_on_cuda():
    torch.manual_seed(0)
    model = GPT(CFG).cuda().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0 if p.dim() > 1 else 1.0)
    prompt = torch.randint(0, 512, (10,)).tolist()
    cached = list(generate(model, prompt, 100, temperature=0))
    plain = list(generate(model, prompt, 100, temperature=0, use_cache=False))
    assert cached == plain


@pytest.mark.slow
def test_cuda_training_run_compiles_and_loads_on_cpu(corpus, home):
    out = run_cli("train", corpus, "--preset", "tiny", "--vocab-size", "512", "--steps", "60", "--compile")
    assert out.returncode == 0, out.stderr
    assert "| cuda |" in out.stdout
    folder = ModelFolder.resolve("default")
    model, _ = checkpoint.load_model(folder, "cpu")
    assert list(generate(model, [1, 2, 3], 5, temperature=0))
    progress = checkpoint.read_progress(folder)
    assert progress["finished"] and progress["step"] == 60
    # a chat on the GPU learns what it was told when its input ends (the update runs there, warm-up first)
    told = run_cli("chat", input="My neighbour Tomas keeps a boat called the Seagull.\n")
    assert told.returncode == 0, told.stdout + told.stderr
    listed = run_cli("memory", "list")
    assert listed.returncode == 0 and "Tomas" in listed.stdout, listed.stdout + listed.stderr


def peaked_model() -> GPT:
    torch.manual_seed(0)
    model = GPT(CFG).cuda().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0 if p.dim() > 1 else 1.0)
    return model


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_cuda_graph_decoding_equals_the_plain_path_in_float32(compile):
    model = peaked_model()
    prompts = [torch.randint(0, 512, (n,)).tolist() for n in (5, 40, 64, 90)]   # 90 > the context of 64
    decoder = Decoder(model, batch_size=4, cuda_graph=True, compile=compile)
    plain = [list(generate(model, p, 100, temperature=0, use_cache=False)) for p in prompts]
    assert collect(generate_batch(decoder, prompts, 100, temperature=0)) == plain
    single = Decoder(model, batch_size=1, cuda_graph=True, compile=compile)
    assert list(generate(model, prompts[2], 100, temperature=0, decoder=single)) == plain[2]


@pytest.mark.slow
def test_compiled_cuda_graph_decoding_in_bf16_follows_the_bf16_plain_path():
    model = peaked_model()
    fast = with_weights(model, "bfloat16")
    prompts = [torch.randint(0, 512, (n,)).tolist() for n in (3, 17, 8, 30, 1, 12, 6, 9)]
    decoded = collect(generate_batch(Decoder(model, 8, "bfloat16", cuda_graph=True, compile=True), prompts, 30,
                                     temperature=0))
    with torch.no_grad():
        scale = fast(torch.tensor([prompts[1]], device="cuda")).float().abs().max().item()
    for prompt, tokens in zip(prompts, decoded):
        assert len(tokens) == 30
        assert_greedy(fast, prompt, tokens, tie=0.06 * scale)


@pytest.mark.slow
def test_fp8_training_follows_the_bf16_loss_curve():
    """The same model, data and steps, compiled, in bf16 and with --fp8's matmuls: the loss curves agree."""
    from nimllm.fp8 import fp8_available, use_fp8
    if not fp8_available("cuda"):
        pytest.skip("this GPU has no FP8 matmuls")
    curves = []
    for fp8 in (False, True):
        torch.manual_seed(0)
        model = GPT(CFG).cuda()
        if fp8:
            assert use_fp8(model.blocks, torch.device("cuda"), print)
        optimizer = build_optimizer(model, TrainConfig(lr=1e-3), "cuda")
        compiled, g = torch.compile(model), torch.Generator(device="cuda").manual_seed(1)
        curve = []
        for _ in range(60):   # a learnable pattern: each sequence counts up from a random start
            start = torch.randint(0, 512, (16, 1), device="cuda", generator=g)
            seq = (start + torch.arange(65, device="cuda")) % 512
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = compiled(seq[:, :-1], seq[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            curve.append(loss.item())
        curves.append(torch.tensor(curve))
    bf16, fp8 = curves
    assert fp8[-10:].mean() < 0.5 * fp8[:5].mean()                  # it learns ...
    assert (fp8[-10:].mean() - bf16[-10:].mean()).abs() < 0.1 * bf16[:5].mean()   # ... as bf16 does


def test_low_memory_training_with_compiled_bf16_moments_follows_fused_adamw():
    """--low-memory on CUDA: the compiled per-parameter step with fp32 moments is the eager one, and with
    bfloat16 moments the loss curve is fused AdamW's."""
    from nimllm.optim import AdamWBf16Moments
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(256, 128, device="cuda"))
    q = torch.nn.Parameter(p.detach().clone())
    eager, compiled = (AdamWBf16Moments([w], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, compiled=c,
                                        moment_dtype=torch.float32) for w, c in ((p, False), (q, True)))
    for _ in range(5):
        grad = torch.randn_like(p)
        p.grad, q.grad = grad.clone(), grad.clone()
        eager.step()
        compiled.step()
    torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)

    curves = []
    for low_memory in (False, True):
        torch.manual_seed(0)
        model = GPT(CFG).cuda()
        model.activation_checkpointing = low_memory
        optimizer = build_optimizer(model, TrainConfig(lr=1e-3, low_memory=low_memory, compile=True), "cuda")
        g, curve = torch.Generator(device="cuda").manual_seed(1), []
        for _ in range(60):
            start = torch.randint(0, 512, (16, 1), device="cuda", generator=g)
            seq = (start + torch.arange(65, device="cuda")) % 512
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(seq[:, :-1], seq[:, 1:])
            loss.backward()
            if not low_memory:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            curve.append(loss.item())
        curves.append(torch.tensor(curve))
    fused, in_backward = curves
    assert in_backward[-10:].mean() < 0.5 * in_backward[:5].mean()
    assert (in_backward[-10:].mean() - fused[-10:].mean()).abs() < 0.1 * fused[:5].mean()


def test_a_selective_update_runs_on_cuda_as_on_the_cpu():
    """The chat's update on the GPU (one batch of answers, bf16 matmuls): the answers' scores equal the
    CPU's in float32, and the update learns its lessons there, with kept answers beside them."""
    from nimllm.config import MemoryConfig
    from nimllm.update import AnswerBatches, selective_update
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    x, y = torch.randint(0, 512, (2, 24)), torch.full((2, 24), -1)
    y[:, 16:] = torch.randint(0, 512, (2, 8))
    keep_x, keep_y = torch.randint(0, 512, (3, 12)), torch.randint(0, 512, (3, 12))
    keep_y[:, :6] = -1
    scores = {}
    for device, shrink in (("cpu", 0.6), ("cuda", 0.0)):
        answers = AnswerBatches.of([(x.to(device), y.to(device)), (keep_x.to(device), keep_y.to(device))], shrink)
        with torch.no_grad():
            scores[device] = [loss.item() for loss in answers.scored(model.to(device))[0]]
    assert scores["cuda"] == pytest.approx(scores["cpu"], abs=1e-4)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    fisher = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    delta, report = selective_update(model, x.cuda(), y.cuda(), anchor, fisher, MemoryConfig(steps=32, lr=1e-2),
                                     keep=[(keep_x.cuda(), keep_y.cuda())])
    assert report.n_weights > 0 and report.loss_after < report.loss_before
