"""MEP's negatives from this rank's minibatch or from every rank's (``objective.negatives_scope``),
on two real processes joined by gloo."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avbert.objectives import EmbeddingScorer, build_sampler
from avbert.objectives.mep import gather_candidates, masked_embedding_prediction

BATCH, CLIPS, WIDTH = 3, 4, 8


class Recording(torch.nn.Module):
    """A sampler that keeps what it drew and from how large a pool."""

    def __init__(self, sampler):
        super().__init__()
        self.sampler, self.drawn, self.pool = sampler, None, None

    def forward(self, embeddings, valid, queries, num):
        self.pool = embeddings.shape[0]
        self.drawn = self.sampler(embeddings, valid, queries, num)
        return self.drawn


def worker(rank: int, init: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(rank)
    targets = torch.randn(BATCH, CLIPS, WIDTH, requires_grad=True)
    valid = torch.ones(BATCH, CLIPS, dtype=torch.bool)
    chosen = torch.zeros(BATCH, CLIPS, dtype=torch.bool)
    chosen[:, 1] = True
    scorer = EmbeddingScorer(WIDTH, "projected", 0.5)
    out = {}
    for scope in ("rank", "global"):
        sampler = Recording(build_sampler("current_minibatch", seed=rank))
        loss = masked_embedding_prediction(targets * 1.0, targets, chosen, valid, sampler, scorer, 20, scope=scope)
        out[scope] = (sampler.pool, sampler.drawn.max().item(), sampler.drawn.shape[1])
    pool, _, offset = gather_candidates(targets, valid)
    loss["loss"].backward()
    out["offset"] = offset
    out["own_rows_equal"] = torch.equal(pool[offset:offset + BATCH], targets)
    out["grad"] = targets.grad is not None and bool(targets.grad.abs().sum() > 0)
    results[rank] = out
    dist.destroy_process_group()


def test_global_scope_draws_from_every_ranks_minibatch(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(worker, args=(f"file://{tmp_path / 'store'}", results), nprocs=2, join=True)
    for rank in (0, 1):
        out = results[rank]
        assert out["rank"] == (BATCH, BATCH * CLIPS - 1, BATCH * CLIPS - 1)  # own minibatch: 11 others
        pool, largest, width = out["global"]
        assert pool == 2 * BATCH and width == 20  # 23 candidates, K = 20 of them
        assert out["offset"] == rank * BATCH and out["own_rows_equal"] and out["grad"]
    assert max(results[0]["global"][1], results[1]["global"][1]) >= BATCH * CLIPS  # drawn from the other rank
