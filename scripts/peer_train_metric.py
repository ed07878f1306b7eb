"""The Python peer's side of the reduced-budget metric-family protocol.

Trains a plain-PyTorch Relation Network, Matching Network (optionally with full-context
embeddings) or semi-hard triplet embedding with the same network, hyperparameters and
budget as the matching `perennial train relation|matching|triplet ...` command, on the
same data (Omniglot, Vinyals train split, rotations as classes, 28x28 antialiased), then
evaluates on test-split episodes the way Perennial does (batch norm with its running
statistics, no gradients). Prints one JSON line:

    {"impl": "pytorch", "algorithm": ..., "accuracy": .., "ci95": .., "train_s": .., ...}

    ~/.cache/perennial/peer-serve-venv/bin/python scripts/peer_train_metric.py \
        --algorithm matching --fce --ways 5 --shots 1 --episodes 500 --eval-episodes 1000

The networks are those of ../shared/peers/peer_bench.py's bench_relation, bench_matching
and bench_triplet (its conv4, conv_block, PlainEpisodeSampler and split_support_query
are imported from there); the data loading is peer_train_maml.py's.
"""
import argparse
import json
import math
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = os.environ.get("PEER_DIR") or os.path.join(HERE, "..", "..", "shared", "peers")
sys.path.insert(0, PEERS)
sys.path.insert(0, HERE)


# --------------------------------------------------------------------------
# Models. Each returns (modules, loss(x, ways, shots, queries), predict(x, ways, shots,
# queries)); x is one class-major episode, per class `shots` support images then
# `queries` query images, as PlainEpisodeSampler.sample(ways, shots + queries) gives.
# --------------------------------------------------------------------------

def relation_model():
    """Sung et al. 2018, as bench_relation: 64x5x5 maps, a class is the mean of its
    support maps (Perennial's choice; bench_relation and the paper sum them, the same
    at one shot), relation module on [query; class] -> sigmoid score, MSE to one-hot."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from peer_bench import conv_block
    embed = nn.Sequential(conv_block(1, 64, 0, True), conv_block(64, 64, 0, True),
                          conv_block(64, 64, 1, False), conv_block(64, 64, 1, False))
    relation = nn.Sequential(conv_block(128, 64, 1, True), conv_block(64, 64, 1, True),
                             nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid())

    def scores(x, ways, shots, queries):
        f = embed(x)
        c, h, w = f.shape[1:]
        f = f.reshape(ways, shots + queries, c, h, w)
        classes = f[:, :shots].mean(dim=1)                       # [ways, c, h, w]
        q = f[:, shots:].reshape(ways * queries, c, h, w)         # [Q, c, h, w]
        pairs = torch.cat([q.unsqueeze(1).expand(-1, ways, -1, -1, -1),
                           classes.unsqueeze(0).expand(q.shape[0], -1, -1, -1, -1)], dim=2)
        return relation(pairs.reshape(-1, 2 * c, h, w)).reshape(-1, ways)   # [Q, ways]

    def loss(x, ways, shots, queries):
        target = F.one_hot(torch.arange(ways).repeat_interleave(queries), ways).float()
        return F.mse_loss(scores(x, ways, shots, queries), target)

    def predict(x, ways, shots, queries):
        return scores(x, ways, shots, queries).argmax(dim=1)

    return nn.ModuleList([embed, relation]), loss, predict


def matching_model(fce, scale):
    """Vinyals et al. 2016, as bench_matching: softmax over cosine similarities to the
    support set (times `scale`, Perennial's --scale); with fce, a bidirectional LSTM over
    the support embeddings (s + out) and an attention LSTMCell run as many steps as there
    are support images, for each query."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from peer_bench import conv4
    d = 64
    embed = conv4("pytorch")
    modules = [embed]
    if fce:
        g_lstm = nn.LSTM(d, d // 2, bidirectional=True, batch_first=True)
        f_lstm = nn.LSTMCell(d, d)
        modules += [g_lstm, f_lstm]

    def log_probs(x, ways, shots, queries):
        e = embed(x).reshape(ways, shots + queries, d)
        s = e[:, :shots].reshape(ways * shots, d)
        q = e[:, shots:].reshape(ways * queries, d)
        ys = torch.arange(ways).repeat_interleave(shots)
        if fce:
            out, _ = g_lstm(s.unsqueeze(0))                      # support in context, g(S)
            s = s + out.squeeze(0)
            h, c = q, torch.zeros_like(q)
            r = torch.zeros_like(q)
            for _ in range(s.shape[0]):                          # queries in context, f(Q)
                h_hat, c = f_lstm(q, (h + r, c))
                h = h_hat + q
                r = torch.softmax(h @ s.t(), dim=1) @ s
            q = h
        att = torch.softmax(scale * (F.normalize(q, dim=1) @ F.normalize(s, dim=1).t()), dim=1)
        probs = att @ F.one_hot(ys, ways).float()
        return torch.log(probs + 1e-8)                           # [Q, ways]

    def loss(x, ways, shots, queries):
        yq = torch.arange(ways).repeat_interleave(queries)
        return F.nll_loss(log_probs(x, ways, shots, queries), yq)

    def predict(x, ways, shots, queries):
        return log_probs(x, ways, shots, queries).argmax(dim=1)

    return nn.ModuleList(modules), loss, predict


def triplet_model(margin):
    """FaceNet-style semi-hard triplet loss, as bench_triplet: unit-length Conv4
    embeddings, squared Euclidean distances, margin m, over the whole batch (support and
    query images alike); classification by the nearest class mean."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from peer_bench import conv4
    embed = conv4("pytorch")

    def sq_dist(a, b):
        return torch.cdist(a, b).pow(2)                                  # [n, m]

    def loss(x, ways, shots, queries):
        y = torch.arange(ways).repeat_interleave(shots + queries)
        e = F.normalize(embed(x), dim=1)
        dist = sq_dist(e, e)                                             # [B, B]
        same = y[:, None] == y[None, :]
        eye = torch.eye(len(y), dtype=torch.bool)
        pos = same & ~eye                                                # (a, p)
        neg = ~same                                                      # (a, n)
        d_ap = dist.unsqueeze(2)                                         # [B, B(p), 1]
        d_an = dist.unsqueeze(1)                                         # [B, 1, B(n)]
        semi = neg.unsqueeze(1) & (d_an > d_ap)                          # [B, B, B]
        inf = torch.tensor(float("inf"))
        # For each (a, p): the nearest negative farther than p; where there is none,
        # the farthest negative.
        semi_min = torch.where(semi, d_an.expand_as(semi), inf).amin(dim=2)
        hardest = torch.where(neg, dist, -inf).amax(dim=1, keepdim=True).expand_as(semi_min)
        d_neg = torch.where(torch.isinf(semi_min), hardest, semi_min)
        return F.relu(dist - d_neg + margin)[pos].mean()

    def predict(x, ways, shots, queries):
        e = F.normalize(embed(x), dim=1).reshape(ways, shots + queries, -1)
        means = e[:, :shots].mean(dim=1)                    # means of unit vectors, as is
        q = e[:, shots:].reshape(ways * queries, -1)
        return sq_dist(q, means).argmin(dim=1)

    return nn.ModuleList([embed]), loss, predict


def main():
    from peer_train_maml import load_split

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithm", choices=["relation", "matching", "triplet"], default="relation")
    p.add_argument("--fce", action="store_true", help="matching only: full-context embeddings")
    p.add_argument("--scale", type=float, default=10.0,
                   help="matching only: cosines times this before the softmax (Perennial's "
                        "--scale, default 10; peer_bench and the paper: 1)")
    p.add_argument("--margin", type=float, default=0.2, help="triplet only: the margin")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--episodes", type=int, default=500, help="training episodes (= Adam updates)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-step", type=int, default=2000,
                   help="multiply the learning rate by --lr-gamma every this many episodes (0 = never)")
    p.add_argument("--lr-gamma", type=float, default=0.5)
    p.add_argument("--eval-ways", type=int, default=None, help="default: --ways")
    p.add_argument("--eval-shots", type=int, default=None, help="default: --shots")
    p.add_argument("--eval-queries", type=int, default=15)
    p.add_argument("--eval-episodes", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=os.environ.get("PERENNIAL_DATA", os.path.join(HERE, "..", "..", "shared", "data")))
    a = p.parse_args()
    if a.fce and a.algorithm != "matching":
        p.error("--fce applies to --algorithm matching only")
    ev_ways = a.eval_ways if a.eval_ways is not None else a.ways
    ev_shots = a.eval_shots if a.eval_shots is not None else a.shots
    ev_queries = a.eval_queries

    import numpy as np
    import torch
    from peer_bench import PlainEpisodeSampler

    torch.set_num_threads(a.threads)
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    # 4 rotations of each character are 4 classes; train on "train", test on "test".
    train = PlainEpisodeSampler(load_split(a.data_dir, "train"))
    test = PlainEpisodeSampler(load_split(a.data_dir, "test"))

    if a.algorithm == "relation":
        model, loss_fn, predict = relation_model()
    elif a.algorithm == "matching":
        model, loss_fn, predict = matching_model(a.fce, a.scale)
    else:
        model, loss_fn, predict = triplet_model(a.margin)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    # lr * gamma^floor(t / step) for update t, as Perennial's Adam schedule.
    sched = torch.optim.lr_scheduler.StepLR(opt, a.lr_step, a.lr_gamma) if a.lr_step > 0 else None

    # Training: one episode per Adam update, batch norm in training mode over the whole
    # episode (support and query images in one batch). A triplet "episode" is a batch of
    # `ways` classes x (shots + queries) images.
    model.train()
    t0 = time.perf_counter()
    for _ in range(a.episodes):
        x, _ = train.sample(a.ways, a.shots + a.queries)
        loss = loss_fn(x, a.ways, a.shots, a.queries)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    train_s = time.perf_counter() - t0

    # Evaluation: batch norm on its running statistics, no gradients, one accuracy per
    # test episode.
    model.eval()
    accs = []
    t1 = time.perf_counter()
    with torch.no_grad():
        yq = torch.arange(ev_ways).repeat_interleave(ev_queries)
        for _ in range(a.eval_episodes):
            x, _ = test.sample(ev_ways, ev_shots + ev_queries)
            accs.append((predict(x, ev_ways, ev_shots, ev_queries) == yq).float().mean().item())
    eval_s = time.perf_counter() - t1
    n = len(accs)
    mean = sum(accs) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in accs) / max(n - 1, 1))

    rec = {"impl": "pytorch", "algorithm": a.algorithm}
    if a.algorithm == "matching":
        rec.update(fce=a.fce, scale=a.scale)
    if a.algorithm == "triplet":
        rec.update(margin=a.margin, mining="semi-hard")
    rec.update({
        "ways": a.ways, "shots": a.shots, "queries": a.queries, "episodes": a.episodes,
        "lr": a.lr, "lr_step": a.lr_step, "lr_gamma": a.lr_gamma,
        "eval_ways": ev_ways, "eval_shots": ev_shots, "eval_queries": ev_queries,
        "accuracy": mean, "ci95": 1.96 * sd / math.sqrt(n), "eval_episodes": n,
        "final_loss": loss.item() if a.episodes else None,
        "train_s": train_s, "eval_s": eval_s, "threads": a.threads, "seed": a.seed,
        "torch": torch.__version__,
    })
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
