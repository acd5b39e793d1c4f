"""The code that runs under AMP on a GPU, exercised on CPU: bf16 autocast through the engine's Runtime,
channels-last(-3d) memory formats, torch.compile of a tiny model, and a one-process torchrun-style group."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from spine.models import create_model
from spine.train.runtime import Runtime, setup_runtime, teardown, to_channels_last

CPU = torch.device("cpu")


def _views_inputs(n: int = 2):
    torch.manual_seed(1)
    return torch.rand(n * 5, 5, 2, 3, 32, 32), torch.arange(n * 5) % 5, torch.ones(n * 5, 3)


def _landmark_inputs(n: int = 2):
    torch.manual_seed(1)
    return (torch.rand(n, 2, 16, 32, 32),)


# Views of 32 px, not 16: at 16 px the last stride-2 conv of the tiny ResNet has a 1x1 output, and oneDNN's bf16
# weight gradient of that conv on CPU is NaN in some calls (torch 2.15; with torch.backends.mkldnn off it is not).
CASES = [("grading_views_tiny", {"view_shape": (3, 32, 32)}, _views_inputs),
         ("landmark_25d_tiny", {"in_chans": 2, "num_points": 5, "grid_size": (16, 32, 32)}, _landmark_inputs),
         ("landmark_3d_tiny", {"in_chans": 2, "num_points": 5, "grid_size": (16, 32, 32)}, _landmark_inputs)]


def _forward_backward(model, inputs, rt: Runtime):
    model.zero_grad(set_to_none=True)
    inputs = tuple(rt.to_device({"x": x})["x"] for x in inputs)
    with rt.autocast():
        out = model(*inputs)
    out.float().square().mean().backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture
def one_thread():
    """oneDNN picks its bf16 kernels by thread count; one thread makes the comparison the same in any worker
    and after any earlier test (a test that left another count behind once made the 3D case miss)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name, kwargs, make", CASES, ids=[c[0] for c in CASES])
def test_bf16_autocast_through_the_runtime_is_finite_and_close_to_fp32(name, kwargs, make, one_thread):
    torch.manual_seed(0)
    model = create_model(name, **kwargs).train()
    inputs = make()
    ref, ref_grads = _forward_backward(model, inputs, Runtime(CPU))
    out, grads = _forward_backward(model, inputs, Runtime(CPU, amp_dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16  # autocast did run: the last layer computed in bf16
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads.values())
    scale = ref.abs().max().clamp_min(1e-3)
    err = float((out.float() - ref).abs().max() / scale)
    assert err < 0.1, err  # bf16 keeps 8 bits of mantissa through every layer
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in grads.values()]),
                                                torch.cat([ref_grads[n].flatten() for n in grads]), dim=0)
    assert float(cos) > 0.98


def test_engine_epoch_under_bf16_autocast_lowers_nothing_to_nan(tiny_cache_dir):
    """train_one_epoch of the engine with a bf16 Runtime (what spine-train does on a GPU) on real items."""
    from torch.utils.data import default_collate

    from spine.cache import Cache
    from spine.train.config import load_config
    from spine.train.engine import param_groups, train_one_epoch, warmup_cosine
    from spine.train.stage import build_stage

    cfg = load_config(["stage=grading", "model=grading_views_tiny", f"cache_dir={tiny_cache_dir}"])
    stage = build_stage(cfg, Cache.open(tiny_cache_dir))
    train, _, _ = stage.datasets(0)
    batch = default_collate([train[(0, i)] for i in range(min(2, len(train)))])
    torch.manual_seed(0)
    model = create_model(cfg.model.name, **stage.model_kwargs())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3)
    rt = Runtime(CPU, amp_dtype=torch.bfloat16, channels_last=True)
    to_channels_last(model)
    stats = train_one_epoch(model, [batch] * 3, optimizer, warmup_cosine(optimizer, 3, 0, 1.0),
                            torch.amp.GradScaler("cpu", enabled=False), stage, rt, grad_clip=1.0, progress=False)
    assert torch.isfinite(torch.tensor(stats["loss"])) and stats["samples_per_s"] > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_channels_last_3d_and_2d_give_the_same_outputs():
    for name, kwargs, make in CASES:
        torch.manual_seed(0)
        model = create_model(name, **kwargs).eval()
        inputs = make()
        with torch.no_grad():
            ref = model(*inputs)
            to_channels_last(model)
            rt = Runtime(CPU, channels_last=True)
            moved = tuple(rt.to_device({"x": x})["x"] for x in inputs)
            out = model(*moved)
        fives = [p for p in model.parameters() if p.dim() == 5]
        fours = [p for p in model.parameters() if p.dim() == 4]
        assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in fives)
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in fours)
        if moved[0].dim() == 5:
            assert moved[0].is_contiguous(memory_format=torch.channels_last_3d)
        assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), name


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SPINE_SLOW"), reason="about a minute of compilation; set SPINE_SLOW=1")
def test_torch_compile_of_a_tiny_model_matches_eager():
    torch.manual_seed(0)
    model = create_model("landmark_25d_tiny", in_chans=2, num_points=5, grid_size=(16, 32, 32))
    (x,) = _landmark_inputs()
    ref = model(x)
    ref.square().mean().backward()
    ref_grad = model.head.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    out = torch.compile(model)(x)
    out.square().mean().backward()
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    assert torch.allclose(model.head.weight.grad, ref_grad, atol=1e-4, rtol=1e-3)


def test_torchrun_with_one_process_joins_a_process_group(monkeypatch):
    """Under torchrun (TORCHELASTIC_RUN_ID set) even one process joins the group, so DDP runs (gloo on CPU)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"TORCHELASTIC_RUN_ID": "test", "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    rt = setup_runtime("cpu", "bf16", True)
    try:
        assert rt.distributed and rt.backend == "gloo" and rt.world_size == 1
        assert rt.amp_dtype is None and not rt.channels_last  # AMP and channels-last stay CUDA-only in runs
    finally:
        teardown(rt)
    assert not torch.distributed.is_initialized()
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert not setup_runtime("cpu").distributed  # a plain process: no group
