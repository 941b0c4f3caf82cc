"""The model: shapes for every sharing x fusion, real sharing, masks, counts."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from avbert.config import ModelConfig, SharingConfig
from avbert.models import AVBert
from avbert.models.sharing import MAP_NAMES, LowRankLinear, Orthogonal

ROOT = Path(__file__).resolve().parents[1]
B, T = 2, 3


def tiny(fusion="mid", layers="cross_layer", modalities="lowrank", dropout=0.0) -> ModelConfig:
    cfg = ModelConfig.tiny()
    return replace(
        cfg,
        fusion=fusion,
        sharing=SharingConfig(layers=layers, modalities=modalities, rank=cfg.sharing.rank),
        transformer=replace(cfg.transformer, dropout=dropout),
    )


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, 3, 4, 32, 32, generator=g), torch.randn(B, T, 1, 40, 32, generator=g)


def test_paper_transformer_counts_round_to_the_paper():
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "params.py"), "--format", "json"],
        check=True, capture_output=True, text=True,
    )
    counts = json.loads(out.stdout)
    assert list(counts) == ["none", "xl", "xl-all", "xl-part"]
    millions = {name: round(row["transformers"] / 1e6) for name, row in counts.items()}
    assert millions == {"none": 128, "xl": 21, "xl-all": 7, "xl-part": 4}
    for row in counts.values():
        assert row["total"] == row["transformers"] + row["cnns"]


@pytest.mark.parametrize(
    "fusion,layers,modalities",
    list(itertools.product(["early", "mid", "late"], ["none", "cross_layer"], ["none", "all", "lowrank"])),
)
def test_forward_backward_shapes(fusion, layers, modalities):
    model = AVBert(tiny(fusion, layers, modalities, dropout=0.1))
    video, audio = inputs()
    out = model(video, audio)
    d = model.width
    assert out.visual_tokens.shape == (B, T, d) and out.audio_tokens.shape == (B, T, d)
    if fusion == "early":
        assert out.visual_hidden is None and out.audio_hidden is None
    else:
        assert out.visual_hidden.shape == (B, 1 + T, d) and out.audio_hidden.shape == (B, 1 + T, d)
    if fusion == "late":
        assert out.multimodal_hidden is None
    else:
        assert out.multimodal_hidden.shape == (B, 2 + 2 * T, d)
    assert out.summary().shape == (B, 2 * d)
    (out.summary() * torch.randn_like(out.summary())).sum().backward()
    grads = [p.grad for p in model.visual_cnn.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached the visual CNN"


def test_cross_layer_uses_the_same_tensors_in_every_layer():
    model = AVBert(tiny(layers="cross_layer", modalities="none"))
    for transformer in model.transformers.values():
        first = transformer.layers[0]
        assert all(layer is first for layer in transformer.layers)
        ids = {id(p) for p in first.parameters()}
        for layer in transformer.layers:
            assert {id(p) for p in layer.parameters()} == ids
    distinct = AVBert(tiny(layers="none", modalities="none")).transformers["visual"].layers
    assert distinct[0].maps["query"].weight is not distinct[1].maps["query"].weight


@pytest.mark.parametrize("init_std", [0.02, 0.069])
def test_init_std_sets_the_dense_maps_and_the_low_rank_u(init_std):
    cfg = tiny(layers="none", modalities="none")
    cfg = replace(cfg, transformer=replace(cfg.transformer, init_std=init_std))
    maps = AVBert(cfg).transformers["visual"].layers[0].maps
    for name in MAP_NAMES:
        assert maps[name].weight.std().item() == pytest.approx(init_std, rel=0.1), name
        assert not maps[name].bias.any()
    cfg = replace(cfg, sharing=SharingConfig(layers="none", modalities="lowrank", rank=cfg.sharing.rank))
    up = AVBert(cfg).transformers["visual"].layers[0].maps["query"].up.weight
    assert up.std().item() == pytest.approx(init_std * cfg.transformer.width**0.5, rel=0.1)  # V x has unit norm


def test_all_sharing_uses_one_layer_for_the_three_transformers():
    model = AVBert(tiny(modalities="all"))
    q = {id(t.layers[0].maps["query"].weight) for t in model.transformers.values()}
    assert len(q) == 1
    norms = {id(t.layers[0].attn_norm.weight) for t in model.transformers.values()}
    assert len(norms) == 3  # LayerNorms stay per modality


def test_lowrank_step_on_visual_loss_moves_shared_u_not_audio_private():
    torch.manual_seed(0)
    model = AVBert(tiny(modalities="lowrank"))
    audio_q = model.transformers["audio"].layers[0].maps["query"]
    visual_q = model.transformers["visual"].layers[0].maps["query"]
    assert isinstance(audio_q, LowRankLinear)
    assert audio_q.up is visual_q.up  # U is one module
    assert audio_q.down is not visual_q.down
    # Give S a non-identity start so its gradient is generic.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2 and p.shape[0] == p.shape[1] == model.cfg.sharing.rank:
                p.normal_(std=0.1)
    before = {
        "U": audio_q.up.weight.detach().clone(),
        "V": audio_q.down.weight.detach().clone(),
        "S": audio_q.rotation.generator.detach().clone(),
    }
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    video, audio = inputs()
    v_tok, _ = model.tokenize(video, audio)
    valid = torch.ones(B, T, dtype=torch.bool)
    visual_only = model._run("visual", [v_tok], [valid])
    # A random linear read-out: the squared norm of a LayerNormed output is constant.
    (visual_only * torch.randn_like(visual_only)).sum().backward()
    opt.step()
    assert not torch.equal(audio_q.up.weight, before["U"]), "the shared U seen by audio did not change"
    assert torch.equal(audio_q.down.weight, before["V"]), "the audio group's private V changed"
    assert torch.equal(audio_q.rotation.generator, before["S"]), "the audio group's private S changed"


def test_s_stays_orthogonal_after_50_steps():
    torch.manual_seed(0)
    model = AVBert(tiny(modalities="lowrank"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    video, audio = inputs()
    target = torch.randn(B, 2 * model.width)
    for _ in range(50):
        opt.zero_grad()
        summary = model(video, audio).summary()
        (summary * target).sum().backward()
        opt.step()
    rotations = [m.rotation for m in model.modules() if isinstance(m, LowRankLinear)]
    assert rotations
    moved = 0
    for rotation in rotations:
        s = rotation()
        eye = torch.eye(s.shape[0])
        assert torch.allclose(s.T @ s, eye, atol=1e-5)
        moved += int(not torch.allclose(s, eye, atol=1e-3))
    assert moved > 0, "S never left the identity: the test would not see a broken parametrization"


@pytest.mark.parametrize("fusion", ["early", "mid", "late"])
def test_padded_positions_do_not_change_unpadded_outputs(fusion):
    model = AVBert(tiny(fusion=fusion)).eval()
    video, audio = inputs()
    valid = torch.tensor([[True, True, False], [True, False, False]])
    v_tok, a_tok = model.tokenize(video, audio)
    v_tok2, a_tok2 = v_tok.clone(), a_tok.clone()
    v_tok2[~valid] = torch.randn_like(v_tok2[~valid]) * 10
    a_tok2[~valid] = torch.randn_like(a_tok2[~valid]) * 10

    def run(v, a):
        vh, ah = model.encode_unimodal(v, a, valid)
        mh = model.fuse(v, a, valid, valid) if fusion == "early" else model.fuse(vh, ah, valid, valid)
        return vh, ah, mh

    with torch.no_grad():
        first, second = run(v_tok, a_tok), run(v_tok2, a_tok2)
    keep_uni = torch.cat([torch.ones(B, 1, dtype=torch.bool), valid], dim=1)
    keep_multi = torch.cat([keep_uni, keep_uni], dim=1) if fusion == "mid" else torch.cat([keep_uni, keep_uni], 1)
    for i, keep in enumerate([keep_uni, keep_uni, keep_multi]):
        if first[i] is None:
            continue
        assert torch.allclose(first[i][keep], second[i][keep], atol=1e-5)
        assert not torch.allclose(first[i][~keep], second[i][~keep], atol=1e-3)  # padded ones did change


def test_a_shared_layer_computes_each_orthogonal_s_once_per_pass(monkeypatch):
    """Cross-layer sharing applies one layer L times; its six S = exp(A - A^T) are
    computed once per Transformer pass, with the outputs and gradients of computing
    them at every application."""
    torch.manual_seed(0)
    model = AVBert(tiny()).train()
    transformer = model.transformers["visual"]
    assert len(transformer.layers) > 1 and len(set(map(id, transformer.layers))) == 1
    x, keep = torch.randn(B, 1 + T, model.width), torch.ones(B, 1 + T, dtype=torch.bool)

    def gradients(output):
        model.zero_grad()
        output.square().sum().backward()
        return {name: p.grad.clone() for name, p in transformer.named_parameters() if p.grad is not None}

    every_application = x
    for layer in transformer.layers:  # no cache: S computed at each application
        every_application = layer(every_application, keep)
    reference = gradients(every_application)

    calls = []
    exp = torch.linalg.matrix_exp
    monkeypatch.setattr(torch.linalg, "matrix_exp", lambda a: calls.append(a.shape) or exp(a))
    once = transformer(x, keep)
    assert len(calls) == len(MAP_NAMES)  # one per map of the shared layer, not per application
    torch.testing.assert_close(once, every_application)
    got = gradients(once)
    assert set(got) == set(reference) and any("generator" in name for name in got)
    for name in reference:
        torch.testing.assert_close(got[name], reference[name], msg=name)
    assert all(m.cached is None for m in transformer.modules() if isinstance(m, Orthogonal))


def test_activation_checkpointing_recomputes_s_with_the_same_gradients():
    torch.manual_seed(0)
    model = AVBert(tiny()).train()
    video, audio = inputs()
    grads = []
    for checkpointing in (False, True):
        model.set_gradient_checkpointing(checkpointing)
        model.zero_grad()
        model(video, audio).summary().square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_channels_last_runs_the_cnns_channels_last_with_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    model = AVBert(tiny()).train()
    pixels = torch.randint(0, 256, (B, T, 4, 32, 32, 3), dtype=torch.uint8).permute(0, 1, 5, 2, 3, 4)  # as the loaders
    _, audio = inputs()
    seen = []
    for encoder in (model.visual_cnn, model.audio_cnn):
        first = next(m for m in encoder.cnn.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
        first.register_forward_pre_hook(lambda module, args: seen.append(
            args[0].is_contiguous(memory_format=torch.channels_last_3d if args[0].dim() == 5 else torch.channels_last)
            and not args[0].is_contiguous()))
    results = []
    for enabled in (False, True):
        model.set_channels_last(enabled)
        model.zero_grad()
        out = model(pixels, audio).summary()
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    assert seen[0] is False and seen[2] is True  # video conv input: standard layout, then channels-last-3d
    inner = model.visual_cnn.cnn.get_submodule("stages.1.1.conv1")  # a [6, 16, 4, 4, 4] activation
    inside = []
    inner.register_forward_pre_hook(lambda module, args: inside.append(
        args[0].is_contiguous(memory_format=torch.channels_last_3d) and not args[0].is_contiguous()))
    model(pixels, audio)
    assert inside == [True]  # the activations stay channels-last through the CNN
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-5)
    scale = max(grad.abs().max() for grad in results[0][1].values())  # some grads are structurally ~0
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4, atol=1e-6 * float(scale), msg=name)
