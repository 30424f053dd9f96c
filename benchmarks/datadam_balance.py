"""How much does each of DataDAM's two loss terms move the pixels? At a run's start (real
initialization, IPC 10, Fashion-MNIST), for a few sampled networks: the attention term and the
lambda-weighted embedding (DM) term, each scaled as the method scales it, and the norm of each
term's gradient on the synthetic images.

    python benchmarks/datadam_balance.py [norm] [--nets K]     # norm: batchnorm (default) | instancenorm

Prints one JSON line per network. Used in benchmarks/RESULTS.md §3 (session 13).
"""
from __future__ import annotations

import json
import sys

import torch

import algorithms
from algorithms.base import Context, config_from
from algorithms.dm import mean_gap
from condense.artifacts import Artifacts
from condense.data import load_dataset


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    nets = int(sys.argv[sys.argv.index("--nets") + 1]) if "--nets" in sys.argv else 3
    if "--nets" in sys.argv:
        args.remove(str(nets))
    norm = args[0] if args else "batchnorm"
    real = load_dataset("fashion-mnist")
    cls = algorithms.ALGORITHMS.get("datadam")
    a = cls(config_from(cls, {"ipc": 10, "iters": 1, "norm": norm}), real, Context(seed=0, artifacts=Artifacts()))
    a.init()
    classes = list(range(real.info.num_classes))
    for k in range(nets):
        net = a.sample_network()
        params = a.siamese_params()
        real_means = a.real_class_means(net, params, classes)
        syn_means = a.syn_class_means(net, a.images, params, classes, a.cfg.ipc)
        att = sum(mean_gap(r, s) for R, S in zip(real_means, syn_means) for r, s in zip(R[:-1], S[:-1]))
        emb = sum(mean_gap(R[-1], S[-1]) for R, S in zip(real_means, syn_means))
        att, emb = a.cfg.scale * att, a.cfg.scale * a.lam * emb
        g_att = torch.autograd.grad(att, a.images, retain_graph=True)[0].norm()
        g_emb = torch.autograd.grad(emb, a.images)[0].norm()
        print(json.dumps({"norm": norm, "net": k, "attention_term": round(float(att.detach()), 4),
                          "embedding_term": round(float(emb.detach()), 4), "grad_norm_attention": round(float(g_att), 4),
                          "grad_norm_embedding": round(float(g_emb), 4),
                          "ratio_embedding_to_attention": round(float(g_emb / g_att), 2)}), flush=True)


if __name__ == "__main__":
    main()
