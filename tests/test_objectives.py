"""InfoNCE, negative samplers, masking, MEP and CPP."""

from __future__ import annotations

import math

import pytest
import torch

from avbert.objectives import (
    SAMPLERS,
    EmbeddingScorer,
    PairHead,
    build_sampler,
    choose_swapped_modality,
    info_nce,
    make_pairs,
    mask_tokens,
    masked_embedding_prediction,
    swap_pairs,
)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def empirical(indices: torch.Tensor, size: int) -> torch.Tensor:
    return torch.bincount(indices.reshape(-1), minlength=size).double() / indices.numel()


# ----------------------------------------------------------------------------- InfoNCE

def test_info_nce_bilinear_matches_hand_computation():
    scorer = EmbeddingScorer(2, kind="bilinear")
    with torch.no_grad():
        scorer.weight.copy_(torch.eye(2))
    o = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    pos = torch.tensor([[2.0, 1.0], [1.0, 0.5]])
    neg = torch.tensor([[[1.0, 0.0], [-1.0, 3.0]], [[0.0, 1.0], [5.0, 5.0]]])
    # scores o.x: query 0: pos 2, negs 1, -1; query 1: pos 1, negs 2, 10
    expected = -(math.log(math.exp(2) / (math.exp(2) + math.exp(1) + math.exp(-1)))
                 + math.log(math.exp(1) / (math.exp(1) + math.exp(2) + math.exp(10)))) / 2
    out = info_nce(scorer, o, pos, neg)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["acc"].item() == pytest.approx(0.5)  # query 0 right, query 1 wrong


def test_projected_score_is_cosine_over_temperature():
    scorer = EmbeddingScorer(2, kind="projected", temperature=0.5)
    with torch.no_grad():
        for proj in (scorer.query_proj, scorer.target_proj):
            proj.weight.copy_(torch.eye(2))
            proj.bias.zero_()
    o = torch.tensor([[3.0, 0.0]])
    candidates = torch.tensor([[[1.0, 1.0], [0.0, 4.0], [-2.0, 0.0]]])
    cosines = torch.tensor([[1 / math.sqrt(2), 0.0, -1.0]])
    torch.testing.assert_close(scorer(o, candidates), cosines / 0.5)
    expected = -math.log(math.exp(2 / math.sqrt(2)) / (math.exp(2 / math.sqrt(2)) + 1 + math.exp(-2)))
    out = info_nce(scorer, o, candidates[:, 0], candidates[:, 1:])
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["acc"].item() == 1.0


def test_info_nce_ties_are_not_counted_correct():
    scorer = EmbeddingScorer(2, kind="bilinear")
    x = torch.ones(3, 2)
    out = info_nce(scorer, x, x, x.unsqueeze(1).repeat(1, 2, 1))
    assert out["acc"].item() == 0.0
    assert out["loss"].item() == pytest.approx(math.log(3), rel=1e-5)


def test_unknown_score_kind_is_refused():
    with pytest.raises(ValueError, match="projected"):
        EmbeddingScorer(4, kind="cosine")


# ----------------------------------------------------------------------------- samplers

def random_problem(seed: int, batch: int = 4, clips: int = 6, width: int = 8):
    gen = generator(seed)
    embeddings = torch.randn(batch, clips, width, generator=gen)
    valid = torch.rand(batch, clips, generator=gen) < 0.8
    valid[:, :2] = True  # every video keeps at least two valid clips
    queries = valid.nonzero()
    return embeddings, valid, queries


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_never_returns_positive_or_invalid(name):
    sampler = build_sampler(name, seed=3, temperature=0.2)
    for seed in range(30):
        embeddings, valid, queries = random_problem(seed)
        index = sampler(embeddings, valid, queries, 5)
        own = queries[:, 0] * valid.shape[1] + queries[:, 1]
        assert index.shape[0] == queries.shape[0] and index.shape[1] <= 5
        assert not (index == own.unsqueeze(1)).any()
        drawn = index >= 0
        assert valid.reshape(-1)[index[drawn]].all()
        assert (drawn.sum(1) == index.shape[1]).any()  # the widest row is full


def test_current_sequence_never_leaves_the_video():
    sampler = build_sampler("current_sequence", seed=1)
    for seed in range(30):
        embeddings, valid, queries = random_problem(seed)
        index = sampler(embeddings, valid, queries, 8)  # more than a video has
        drawn = index >= 0
        assert (index // valid.shape[1] == queries[:, :1])[drawn].all()


def test_a_negative_is_never_drawn_twice():
    """Current-Sequence with K larger than a video's other clips: each of them once, the rest
    of the row empty (K' = min(K, candidates))."""
    sampler = build_sampler("current_sequence", seed=1)
    for seed in range(30):
        embeddings, valid, queries = random_problem(seed)
        index = sampler(embeddings, valid, queries, 16)
        candidates = valid.sum(1)[queries[:, 0]] - 1  # the video's other valid clips
        for row, count in zip(index.tolist(), candidates.tolist()):
            drawn = [i for i in row if i >= 0]
            assert len(drawn) == len(set(drawn)) == count
            assert row[count:] == [-1] * (len(row) - count)


def test_missing_negatives_are_left_out_of_the_denominator():
    torch.manual_seed(0)
    scorer = EmbeddingScorer(8, "projected", temperature=0.5)
    o, pos, neg = torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 4, 8)
    present = torch.tensor([[True, True, False, False], [True] * 4, [True, False, False, False]])
    masked = info_nce(scorer, o, pos, neg, present)
    rows = [info_nce(scorer, o[i:i + 1], pos[i:i + 1], neg[i:i + 1, present[i]])["loss"] for i in range(3)]
    torch.testing.assert_close(masked["loss"], torch.stack(rows).mean())


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_enough_candidates_are_drawn_without_replacement(name):
    embeddings, valid, queries = random_problem(0, batch=4, clips=8)
    valid[:] = True
    index = build_sampler(name)(embeddings, valid, queries, 6)  # 7 candidates in a video, 31 in the batch
    assert all(len(set(row.tolist())) == 6 for row in index)


def expected_distribution(name: str, embeddings, valid, query, temperature):
    batch, clips, _ = embeddings.shape
    allowed = valid.reshape(-1).clone()
    own = query[0] * clips + query[1]
    allowed[own] = False
    if name == "current_sequence":
        allowed &= torch.arange(batch * clips) // clips == query[0]
    if name.startswith("cans"):
        flat = torch.nn.functional.normalize(embeddings.reshape(batch * clips, -1), dim=-1).double()
        cos = flat @ flat[own]
        sign = 1.0 if name == "cans_similar" else -1.0
        weights = torch.exp(sign * cos / temperature) * allowed
    else:
        weights = allowed.double()
    return weights / weights.sum()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_distribution_matches_definition(name):
    temperature, draws = 0.3, 40_000
    embeddings, valid, _ = random_problem(7, batch=3, clips=5)
    query = torch.tensor([1, 2])
    valid[1, 2] = True
    sampler = build_sampler(name, seed=11, temperature=temperature)
    index = sampler(embeddings, valid, query.repeat(draws, 1), 1)  # K = 1: each row one independent draw
    expected = expected_distribution(name, embeddings, valid, query, temperature)
    assert total_variation(empirical(index, valid.numel()), expected) < 0.02
    uniform = expected_distribution("current_minibatch", embeddings, valid, query, temperature)
    if name.startswith("cans"):  # the check above can tell CANS from uniform sampling
        assert total_variation(expected, uniform) > 0.1


@pytest.mark.parametrize("name, favourite", [("cans_similar", "closest"), ("cans_dissimilar", "farthest")])
def test_cans_prefers_similar_or_dissimilar(name, favourite):
    gen = generator(5)
    base = torch.randn(16, generator=gen)
    noise = torch.randn(2, 6, 16, generator=gen)
    embeddings = noise.clone()
    embeddings[0, 0] = base
    embeddings[0, 1] = base + 0.05 * noise[0, 1]  # the closest candidate
    embeddings[1, 3] = -base  # the farthest candidate
    valid = torch.ones(2, 6, dtype=torch.bool)
    index = build_sampler(name, seed=0, temperature=0.1)(embeddings, valid, torch.tensor([[0, 0]] * 5000), 1)
    counts = torch.bincount(index.reshape(-1), minlength=12)
    expected = 1 if favourite == "closest" else 6 + 3
    assert counts.argmax().item() == expected
    assert counts[expected] > 0.5 * index.numel()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_state_dict_round_trip_reproduces_next_draws(name):
    embeddings, valid, queries = random_problem(2)
    original = build_sampler(name, seed=4)
    first = original(embeddings, valid, queries, 3)
    state = {key: value.clone() for key, value in original.state_dict().items()}
    expected = [original(embeddings, valid, queries, 3) for _ in range(3)]
    assert not torch.equal(first, expected[0])  # the counter advances
    restored = build_sampler(name, seed=99)
    restored.load_state_dict(state)
    assert all(torch.equal(restored(embeddings, valid, queries, 3), e) for e in expected)


def test_sampler_detaches_embeddings():
    embeddings, valid, queries = random_problem(0)
    embeddings.requires_grad_(True)
    index = build_sampler("cans_similar")(embeddings, valid, queries, 2)
    assert not index.requires_grad and embeddings.grad is None


def test_unknown_sampler_lists_valid_names():
    with pytest.raises(ValueError, match="current_sequence.*current_minibatch.*cans_similar.*cans_dissimilar"):
        build_sampler("hardest")


def test_query_without_candidates_is_refused():
    embeddings, valid = torch.randn(2, 3, 4), torch.tensor([[True, False, False], [True, True, True]])
    with pytest.raises(ValueError, match="no candidate"):
        build_sampler("current_sequence")(embeddings, valid, torch.tensor([[0, 0]]), 2)


# ----------------------------------------------------------------------------- masking

def masking_problem(batch: int = 256, clips: int = 50, width: int = 4):
    """Tokens whose first channel is their flat position, so a moved token shows where it came from."""
    tokens = torch.randn(batch, clips, width, generator=generator(1))
    tokens[..., 0] = torch.arange(batch * clips, dtype=torch.float).reshape(batch, clips)
    valid = torch.ones(batch, clips, dtype=torch.bool)
    valid[::2, 40:] = False
    return tokens, valid, torch.full((width,), -1.0)


def classify_masked(tokens, valid, masked, mask_embedding):
    """bool [B, T] each: set to the mask embedding, unchanged, replaced by another valid token."""
    replaced = (masked == mask_embedding).all(-1)
    source = masked[..., 0].long().clamp(min=0)
    flat = tokens.reshape(-1, tokens.shape[-1])
    copied = (masked == flat[source]).all(-1) & ~replaced
    own = torch.arange(valid.numel()).reshape(valid.shape)
    unchanged = copied & (source == own)
    random = copied & (source != own) & valid.reshape(-1)[source]
    return replaced, unchanged, random


def test_masking_fractions_within_bounds():
    tokens, valid, mask_embedding = masking_problem()
    masked, chosen = mask_tokens(tokens, valid, mask_embedding, generator(0))
    assert not (chosen & ~valid).any()
    fraction = chosen.sum() / valid.sum()
    assert 0.13 < fraction < 0.17
    replaced, unchanged, random = classify_masked(tokens, valid, masked, mask_embedding)
    assert unchanged[~chosen].all() and not replaced[~chosen].any()
    n = chosen.sum()
    assert 0.75 < (replaced & chosen).sum() / n < 0.85
    assert 0.06 < (random & chosen).sum() / n < 0.14
    assert 0.06 < (unchanged & chosen).sum() / n < 0.14
    assert (replaced | unchanged | random)[chosen].all()  # random tokens are valid tokens of the batch


def test_masking_fractions_are_configurable_and_deterministic():
    tokens, valid, mask_embedding = masking_problem()
    masked, chosen = mask_tokens(tokens, valid, mask_embedding, generator(3), mask_prob=0.5, replace=0.0, random=1.0)
    again, chosen_again = mask_tokens(tokens, valid, mask_embedding, generator(3), mask_prob=0.5, replace=0.0,
                                      random=1.0)
    assert torch.equal(masked, again) and torch.equal(chosen, chosen_again)
    assert 0.45 < chosen.sum() / valid.sum() < 0.55
    replaced, unchanged, random = classify_masked(tokens, valid, masked, mask_embedding)
    assert random[chosen].all() and not replaced.any()


def test_masking_chooses_at_least_one_valid_position_per_sequence():
    tokens, valid, mask_embedding = masking_problem(batch=32, clips=5)
    valid[:, 0] = False
    _, chosen = mask_tokens(tokens, valid, mask_embedding, generator(0), mask_prob=0.0)
    assert (chosen.sum(1) == 1).all() and not (chosen & ~valid).any()


# ----------------------------------------------------------------------------- MEP

def test_mep_gradients_reach_outputs_targets_and_scorer():
    gen = generator(0)
    outputs = torch.randn(3, 5, 8, generator=gen, requires_grad=True)
    targets = torch.randn(3, 5, 8, generator=gen, requires_grad=True)
    valid = torch.ones(3, 5, dtype=torch.bool)
    chosen = torch.zeros(3, 5, dtype=torch.bool)
    chosen[0, 1] = chosen[2, 4] = True
    scorer = EmbeddingScorer(8)
    out = masked_embedding_prediction(outputs, targets, chosen, valid, build_sampler("current_minibatch"), scorer, 14)
    out["loss"].backward()
    # all 14 other positions are negatives of each query, so every target gets a gradient
    assert (targets.grad.abs().sum(-1) > 0).all()
    assert (outputs.grad.abs().sum(-1) > 0).sum() == 2
    assert scorer.query_proj.weight.grad is not None


def test_mep_ignores_chosen_invalid_positions_and_handles_no_queries():
    outputs, targets = torch.randn(2, 4, 8, requires_grad=True), torch.randn(2, 4, 8)
    valid = torch.tensor([[True, True, False, False], [True, True, True, True]])
    chosen = ~valid
    out = masked_embedding_prediction(outputs, targets, chosen, valid, build_sampler("cans_similar"),
                                      EmbeddingScorer(8), 3)
    assert out["loss"].item() == 0.0 and out["loss"].requires_grad
    out["loss"].backward()


# ----------------------------------------------------------------------------- CPP

def test_cpp_pairs_are_balanced_and_false_pairs_mix_two_videos():
    batch = 20_000
    partner, is_real = make_pairs(batch, generator(0), prob=0.5)
    bound = 4 * math.sqrt(0.25 / batch)  # four binomial standard deviations
    assert abs(is_real.float().mean().item() - 0.5) < bound
    own = torch.arange(batch)
    assert torch.equal(partner[is_real], own[is_real])
    assert (partner[~is_real] != own[~is_real]).all()
    assert partner.min() >= 0 and partner.max() < batch
    swap_audio = choose_swapped_modality(batch, generator(1))
    assert abs(swap_audio.float().mean().item() - 0.5) < bound
    visual_id, audio_id = swap_pairs(own, own, partner, swap_audio)
    assert torch.equal(visual_id == audio_id, is_real)
    assert torch.equal(visual_id[swap_audio], own[swap_audio])  # audio swapped: own visual kept
    assert torch.equal(audio_id[~swap_audio], own[~swap_audio])


def test_cpp_partners_cover_the_other_videos():
    partner, is_real = make_pairs(4, generator(0), prob=1.0)
    assert not is_real.any()
    seen = {(b, int(p)) for _ in range(200) for b, p in enumerate(make_pairs(4, generator(_), prob=1.0)[0])}
    assert seen == {(b, p) for b in range(4) for p in range(4) if p != b}


def test_cpp_single_sample_batch_is_real():
    partner, is_real = make_pairs(1, generator(0), prob=1.0)
    assert is_real.all() and partner.tolist() == [0]


def test_pair_head_loss_and_accuracy():
    head = PairHead(6, 4)
    features, is_real = torch.randn(10, 6), torch.arange(10) % 2 == 0
    out = head(features, is_real)
    logits = head.logits(features)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, is_real.float())
    assert out["loss"].item() == pytest.approx(expected.item())
    assert out["acc"].item() == pytest.approx(((logits > 0) == is_real).float().mean().item())
