"""Training the TreeHop query-update model (InfoNCE with hard negatives), CPU-friendly.

A training example is a chain: (question q, first-hop passage c1) -> second-hop passage c2,
with hard negatives, from HotpotQA train supporting facts: of the two supporting paragraphs,
the one closer to the question (cosine) is hop 1 and the other hop 2; comparison questions also
get the reverse chain, since either entity can come first. Hard negatives are the question's
distractor paragraphs (picked by HotpotQA's own retriever to look relevant). (Synthetic bridge
chains from the 2Wiki passages were tried and did not help: rag/weights/TREEHOP_CARD.md.)

The loss is InfoNCE over {c2} + hard negatives + in-batch negatives (the paper's recipe:
temperature 0.15, 5 hard negatives, batch 64), with held-out accuracy on HotpotQA chains.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from rag.treehop import TreeHopModel, TreeHopModelConfig


@dataclass(frozen=True)
class TrainConfig:
    """The paper trains 8 epochs at lr 6e-5 on ~100k chains; our few thousand chains need
    more passes at a higher rate (chosen on the held-out split, see the model card)."""

    epochs: int = 40
    batch_size: int = 64
    lr: float = 3e-4
    temperature: float = 0.15
    hard_negatives: int = 5
    heldout_fraction: float = 0.1
    seed: int = 0


@dataclass
class Chains:
    """Embedded chains: q, c1, c2 (n, d) and negatives (n, h, d)."""

    q: np.ndarray
    c1: np.ndarray
    c2: np.ndarray
    negatives: np.ndarray

    def __len__(self) -> int:
        return len(self.q)

    def subset(self, index: np.ndarray) -> "Chains":
        return Chains(self.q[index], self.c1[index], self.c2[index], self.negatives[index])


def _pick(pool: list, count: int, rng: random.Random) -> list:
    """`count` items from a non-empty pool, without repeats while the pool lasts."""
    picked = rng.sample(pool, min(count, len(pool)))
    while len(picked) < count:
        picked.append(rng.choice(pool))
    return picked


def build_chains(questions, embed, hard_negatives: int, seed: int = 0) -> Chains:
    """Chains from HotpotQA records (eval_suites.hotpotqa.HotpotQuestion) with `embed(texts)`.

    Questions without both supporting paragraphs or without any distractor are skipped.
    """
    rng = random.Random(seed)
    rows = []
    for question in questions:
        titles = [t for t in question.supporting_titles if t in question.paragraphs]
        distractors = [t for t in question.paragraphs if t not in titles]
        if len(titles) == 2 and distractors:
            rows.append((question, titles, distractors))
    texts = {}
    for question, titles, distractors in rows:
        for title in [*titles, *distractors]:
            texts.setdefault(title, f"{title}: {question.paragraphs[title]}")
    order = list(texts)
    vectors = dict(zip(order, embed([texts[t] for t in order])))
    q_vectors = embed([question.question for question, _, _ in rows])
    q, c1, c2, negatives = [], [], [], []
    for (question, titles, distractors), qv in zip(rows, q_vectors):
        first, second = sorted(titles, key=lambda t: -float(vectors[t] @ qv))
        pairs = [(first, second)] + ([(second, first)] if question.type == "comparison" else [])
        for a, b in pairs:
            q.append(qv), c1.append(vectors[a]), c2.append(vectors[b])
            negatives.append(np.stack([vectors[t] for t in _pick(distractors, hard_negatives, rng)]))
    return Chains(np.stack(q), np.stack(c1), np.stack(c2), np.stack(negatives))


def info_nce(model_net, batch: Chains, temperature: float):
    import torch

    q, c1, c2, negatives = (torch.from_numpy(x) for x in (batch.q, batch.c1, batch.c2, batch.negatives))
    q_next = model_net(q, c1)
    positives = (q_next * c2).sum(-1, keepdim=True)
    hard = torch.einsum("bd,bhd->bh", q_next, negatives)
    in_batch = q_next @ c2.T
    in_batch = in_batch.masked_fill(torch.eye(len(q), dtype=torch.bool), float("-inf"))
    logits = torch.cat([positives, hard, in_batch], dim=1) / temperature
    return torch.nn.functional.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


def hop_accuracy(model: TreeHopModel, chains: Chains) -> float:
    """Fraction of chains where q_next ranks c2 above all its hard negatives and c1."""
    q_next = model.next_queries(chains.q, chains.c1)
    positive = (q_next * chains.c2).sum(-1)
    rivals = np.concatenate([np.einsum("bd,bhd->bh", q_next, chains.negatives),
                             (q_next * chains.c1).sum(-1, keepdims=True)], axis=1)
    return float(np.mean(positive > rivals.max(axis=1)))


def split_heldout(chains: Chains, fraction: float, seed: int) -> tuple[Chains, Chains]:
    """(training, held-out) by a seeded permutation."""
    order = np.random.default_rng(seed).permutation(len(chains))
    n_heldout = max(1, int(len(chains) * fraction))
    return chains.subset(order[n_heldout:]), chains.subset(order[:n_heldout])


def train(training: Chains, heldout: Chains, config: TrainConfig = TrainConfig(),
          model_config: TreeHopModelConfig = TreeHopModelConfig(), progress=None) -> tuple[TreeHopModel, dict]:
    """Train on `training`, measuring hop accuracy on `heldout` after each epoch.

    Returns the model and a history dict (loss and held-out accuracy per epoch).
    """
    import torch

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = TreeHopModel(model_config)
    optimizer = torch.optim.AdamW(model.net.parameters(), lr=config.lr, weight_decay=0.01)
    history = {"loss": [], "heldout_accuracy": [], "train_chains": len(training), "heldout_chains": len(heldout),
               "heldout_accuracy_untrained": hop_accuracy(model, heldout)}
    for epoch in range(config.epochs):
        training = training.subset(rng.permutation(len(training)))
        model.net.train()
        losses = []
        for start in range(0, len(training), config.batch_size):
            batch = training.subset(np.arange(start, min(start + config.batch_size, len(training))))
            loss = info_nce(model.net, batch, config.temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.net.eval()
        history["loss"].append(float(np.mean(losses)))
        history["heldout_accuracy"].append(hop_accuracy(model, heldout))
        if progress:
            progress(epoch, history)
    return model, history
