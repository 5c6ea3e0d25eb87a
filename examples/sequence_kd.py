"""Sequence-level KD (Kim & Rush 2016) as the unified method (Chen et al. 2023, Eq. 3, §3.5).

An autoregressive token model has one target site per step and no latents; targets are
teacher-forced, so the surrogate loss with KL is the Monte Carlo estimate of the sequence-level
KL on the teacher's sampled sequences: sum_t KL(p_T(y_t | y_<t) || p_S(y_t | y_<t)).

    python examples/sequence_kd.py [--steps 300]
"""

import argparse

import torch
from torch import nn
from torch.distributions import Categorical

import dgmkd


class TokenGRU(nn.Module):
    """A GRU language model over ``vocab`` tokens, sampling ``length`` tokens from a start token."""

    def __init__(self, hidden, vocab=8, length=12):
        super().__init__()
        self.emb, self.gru, self.head = nn.Embedding(vocab + 1, hidden), nn.GRUCell(hidden, hidden), nn.Linear(hidden, vocab)
        self.vocab, self.length = vocab, length

    def forward(self, n):
        tok = torch.full((n,), self.vocab, dtype=torch.long)  # start token
        h = torch.zeros(n, self.gru.hidden_size)
        out = []
        for t in range(self.length):
            h = self.gru(self.emb(tok), h)
            tok = dgmkd.target(f"y{t}", Categorical(logits=self.head(h)))
            out.append(tok)
        return torch.stack(out, 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    teacher, student = TokenGRU(64), TokenGRU(16)
    with torch.no_grad():  # a teacher with some structure: sharper logits
        teacher.head.weight.mul_(4)
    hist = dgmkd.distill(teacher, student, 256, steps=a.steps, lr=1e-2, progress=False, latent_weight=0.0)
    print(f"sequence-level KL (nats per sequence): first {hist['loss'][0]:.3f} -> last {hist['loss'][-1]:.3f}")


if __name__ == "__main__":
    main()
