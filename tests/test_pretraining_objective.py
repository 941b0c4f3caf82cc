"""AVBertPretrainer at the tiny preset: MEP at every Transformer plus CPP, for each fusion."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from avbert.config import ModelConfig, ObjectiveConfig
from avbert.models import AVBert
from avbert.objectives import AVBertPretrainer

EXPECTED_TERMS = {
    "early": ["mep_multimodal", "cpp"],
    "mid": ["mep_visual", "mep_audio", "mep_multimodal", "cpp"],
    "late": ["mep_visual", "mep_audio", "cpp"],
}


def tiny_batch(batch: int = 4, clips: int = 4, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "video": torch.randn(batch, clips, 3, 4, 32, 32, generator=gen),
        "audio": torch.randn(batch, clips, 1, 40, 32, generator=gen),
        "valid": torch.ones(batch, clips, dtype=torch.bool),
    }


def pretrainer(fusion: str, **objective) -> AVBertPretrainer:
    torch.manual_seed(0)
    cfg = ModelConfig.tiny()
    cfg.fusion = fusion
    return AVBertPretrainer(AVBert(cfg), ObjectiveConfig(num_negatives=4, **objective))


@pytest.mark.parametrize("fusion", ["early", "mid", "late"])
def test_forward_backward_every_term_finite(fusion):
    model = pretrainer(fusion)
    out = model(tiny_batch())
    assert all(p.grad is None for p in model.parameters())  # forward never calls backward
    expected = {"loss"} | {f"{term}/{kind}" for term in EXPECTED_TERMS[fusion] for kind in ("loss", "acc")}
    assert set(out) == expected
    assert all(torch.isfinite(value).all() and value.dim() == 0 for value in out.values())
    weighted = sum(out[f"{term}/loss"] for term in EXPECTED_TERMS[fusion])
    assert out["loss"].item() == pytest.approx(weighted.item(), rel=1e-6)
    out["loss"].backward()
    for name in ("model.visual_cnn", "model.audio_cnn", "mask_embedding", "scorers", "pair_head"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_weights_scale_the_terms():
    batch = tiny_batch()
    base = pretrainer("mid").eval()
    weighted = pretrainer("mid", weights={"mep_visual": 2.0, "mep_audio": 0.0, "mep_multimodal": 1.0, "cpp": 0.5})
    weighted.eval()
    out, out_weighted = base(batch), weighted(batch)
    for key in set(out) - {"loss"}:  # same seed, same model: identical terms
        assert out[key].item() == pytest.approx(out_weighted[key].item(), rel=1e-5)
    expected = 2 * out["mep_visual/loss"] + out["mep_multimodal/loss"] + 0.5 * out["cpp/loss"]
    assert out_weighted["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_padded_clips_and_chance_level_at_init():
    batch = tiny_batch(batch=6)
    batch["valid"][::2, 3:] = False
    out = pretrainer("mid").eval()(batch)
    assert all(math.isfinite(value.item()) for value in out.values())
    # untrained: CPP near log 2, MEP near log(1 + K)
    assert out["cpp/loss"].item() == pytest.approx(math.log(2), abs=0.3)
    assert out["mep_visual/loss"].item() == pytest.approx(math.log(5), abs=1.0)


def test_state_dict_resumes_masking_pairs_and_sampling_exactly():
    batch = tiny_batch()
    model = pretrainer("mid").eval()
    model(batch)
    state = copy.deepcopy(model.state_dict())
    expected = [model(batch)["loss"].item() for _ in range(2)]
    restored = pretrainer("mid", seed=123).eval()
    restored.load_state_dict(state)
    assert [restored(batch)["loss"].item() for _ in range(2)] == expected
    assert expected[0] != expected[1]  # each step draws new masks, pairs and negatives


def capture(model: AVBertPretrainer) -> dict:
    """Record, call by call, what the pretrainer passes between the model's stages."""
    seen, inner = {"inputs": [], "hidden": [], "fused": []}, model.model
    tokenize, encode, fuse = inner.tokenize, inner.encode_unimodal, inner.fuse

    def tokenize_(*args):
        seen["tokens"] = tokenize(*args)
        return seen["tokens"]

    def encode_(v_in, a_in, valid):
        seen["inputs"].append((v_in, a_in))
        seen["hidden"].append(encode(v_in, a_in, valid))
        return seen["hidden"][-1]

    def fuse_(v_seq, a_seq, v_valid, a_valid):
        seen["fused"].append((v_seq, a_seq))
        return fuse(v_seq, a_seq, v_valid, a_valid)

    inner.tokenize, inner.encode_unimodal, inner.fuse = tokenize_, encode_, fuse_
    return seen


def source_rows(swapped: torch.Tensor, original: torch.Tensor) -> list[int]:
    """For each row of ``swapped``, the index of the identical row of ``original``."""
    same = (swapped.unsqueeze(1) == original.unsqueeze(0)).flatten(2).all(-1)
    assert (same.sum(1) == 1).all()
    return same.float().argmax(1).tolist()


def assert_one_modality_swapped(pairs: tuple, originals: tuple, batch: int) -> None:
    v_src, a_src = (source_rows(s, o) for s, o in zip(pairs, originals))
    for b in range(batch):  # one modality is the sample's own, the other another video's
        assert (v_src[b] == b) != (a_src[b] == b)


@pytest.mark.parametrize("cpp_input", ["clean", "masked"])
def test_mep_pass_sees_masked_tokens_and_cpp_pass_clean_ones(cpp_input):
    model = pretrainer("mid", cpp_input=cpp_input).eval()
    seen = capture(model)
    model(tiny_batch(batch=8))
    changed = [(inp != tok).any(-1) for inp, tok in zip(seen["inputs"][0], seen["tokens"])]
    for modality in changed:
        assert modality.any(dim=1).float().mean() > 0.5  # nearly every sequence has a masked token
        assert modality.float().mean() < 0.5
    if cpp_input == "clean":  # a second unimodal pass, on the unmasked tokens
        assert len(seen["inputs"]) == 2
        for inp, tok in zip(seen["inputs"][1], seen["tokens"]):
            assert torch.equal(inp, tok)
    else:
        assert len(seen["inputs"]) == 1


@pytest.mark.parametrize("fusion", ["early", "mid"])
def test_masked_cpp_pairs_masked_sequences_and_drops_multimodal_mep_of_false_pairs(fusion):
    model = pretrainer(fusion, cpp_prob=1.0, cpp_input="masked").eval()
    seen = capture(model)
    out = model(tiny_batch(batch=6))
    original = seen["hidden"][0] if fusion == "mid" else seen["inputs"][0]
    assert len(seen["fused"]) == 1
    assert_one_modality_swapped(seen["fused"][0], original, 6)
    assert out["mep_multimodal/loss"].item() == 0.0  # no real pair left to score
    assert out["cpp/loss"].item() > 0


@pytest.mark.parametrize("fusion", ["early", "mid"])
def test_clean_cpp_pairs_unmasked_sequences_and_keeps_multimodal_mep(fusion):
    model = pretrainer(fusion, cpp_prob=1.0, cpp_input="clean").eval()
    seen = capture(model)
    out = model(tiny_batch(batch=6))
    masked = seen["hidden"][0] if fusion == "mid" else seen["inputs"][0]
    clean = seen["hidden"][1] if fusion == "mid" else seen["tokens"]
    (mep_v, mep_a), pairs = seen["fused"]
    assert torch.equal(mep_v, masked[0]) and torch.equal(mep_a, masked[1])  # each sample's own masked pair
    assert_one_modality_swapped(pairs, clean, 6)
    assert out["mep_multimodal/loss"].item() > 0  # every sample is scored, false pairs or not
    assert out["cpp/loss"].item() > 0
