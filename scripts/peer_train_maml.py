"""The Python peer's side of the reduced-budget MAML-family protocol (issue #3).

Trains learn2learn's MAML (second order or first order), ANIL or Meta-SGD, or plain
Reptile, with the same network, hyperparameters and budget as the matching
`perennial train ...` command, on the same data (Omniglot, Vinyals splits, rotations as
classes, 28x28 antialiased), then evaluates on test-split episodes the way Perennial
does (transductive batch norm, `--eval-steps` inner steps). Prints one JSON line:

    {"impl": "learn2learn", "algorithm": ..., "accuracy": .., "ci95": .., "train_s": .., ...}

    ../peer-venv/bin/python scripts/peer_train_maml.py --algorithm maml --ways 5 --shots 1 \
        --iterations 300 --meta-batch 32 --eval-episodes 1000

The data loading reuses ../shared/peers/peer_bench.py's reader (same npz files, same
resize), extended to the test split.
"""
import argparse
import csv
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = os.environ.get("PEER_DIR") or os.path.join(HERE, "..", "..", "shared", "peers")
sys.path.insert(0, PEERS)


def split_ids(data_dir, split):
    first = {}
    with open(os.path.join(data_dir, "omniglot", "alphabets.tsv")) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            first[(r["set"], r["alphabet"])] = int(r["first_char_id"])
    with open(os.path.join(data_dir, "splits", f"omniglot__{split}.json")) as f:
        js = json.load(f)
    ids = []
    for part in ("background", "evaluation"):
        for alphabet, chars in js.get(part, {}).items():
            for c in chars:
                ids.append(first[(part, alphabet)] + int(c[len("character"):]) - 1)
    return ids


def load_split(data_dir, split):
    """float32 tensor [chars, 20, 28, 28], ink = 1.0, as peer_bench.build_images."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    ids = split_ids(data_dir, split)
    out = np.empty((len(ids), 20, 28, 28), dtype=np.float32)
    for fname, lo in (("images_background.npz", 1), ("images_evaluation.npz", 965)):
        with np.load(os.path.join(data_dir, "omniglot", fname)) as z:
            imgs = z["images"]
        rows = [(k, i - lo) for k, i in enumerate(ids) if lo <= i < lo + imgs.shape[0]]
        for s in range(0, len(rows), 128):
            chunk = rows[s:s + 128]
            x = torch.from_numpy(~imgs[[r for _, r in chunk]]).float().reshape(-1, 1, 105, 105)
            y = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
            out[[k for k, _ in chunk]] = y.reshape(len(chunk), 20, 28, 28).numpy()
    return torch.from_numpy(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithm", choices=["maml", "fomaml", "anil", "metasgd", "reptile"], default="maml")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--inner-steps", type=int, default=1)
    p.add_argument("--eval-steps", type=int, default=3)
    p.add_argument("--inner-lr", type=float, default=0.4)
    p.add_argument("--meta-lr", type=float, default=1e-3)
    p.add_argument("--eval-episodes", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=os.environ.get("PERENNIAL_DATA", os.path.join(HERE, "..", "..", "shared", "data")))
    a = p.parse_args()

    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import learn2learn as l2l
    from peer_bench import PlainEpisodeSampler, conv4, split_support_query

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    train = PlainEpisodeSampler(load_split(a.data_dir, "train"))
    test = PlainEpisodeSampler(load_split(a.data_dir, "test"))
    k = a.shots + a.queries

    body = conv4("learn2learn")
    head = nn.Linear(64, a.ways)
    if a.algorithm == "anil":
        features = body
        learner = l2l.algorithms.MAML(head, lr=a.inner_lr, first_order=False)
        params = list(features.parameters()) + list(learner.parameters())
    elif a.algorithm == "metasgd":
        features = None
        learner = l2l.algorithms.MetaSGD(nn.Sequential(body, head), lr=a.inner_lr, first_order=False)
        params = list(learner.parameters())
    elif a.algorithm == "reptile":
        features = None
        learner = nn.Sequential(body, head)
        params = list(learner.parameters())
    else:
        features = None
        learner = l2l.algorithms.MAML(nn.Sequential(body, head), lr=a.inner_lr,
                                      first_order=(a.algorithm == "fomaml"))
        params = list(learner.parameters())
    opt = torch.optim.Adam(params, lr=a.meta_lr) if a.algorithm != "reptile" else None

    def adapt(x, y, steps, train_mode):
        """Fast model (a callable) after `steps` inner steps on (x, y)."""
        if a.algorithm == "reptile":
            import copy
            fast = copy.deepcopy(learner)
            sgd = torch.optim.SGD(fast.parameters(), lr=a.inner_lr)
            for _ in range(steps):
                sgd.zero_grad()
                F.cross_entropy(fast(x), y).backward()
                sgd.step()
            return fast
        clone = learner.clone()
        if a.algorithm == "anil":
            fx = features(x)
            for _ in range(steps):
                clone.adapt(F.cross_entropy(clone(fx), y))
            return lambda q: clone(features(q))
        for _ in range(steps):
            clone.adapt(F.cross_entropy(clone(x), y))
        return clone

    t0 = time.perf_counter()
    for it in range(a.iterations):
        if a.algorithm == "reptile":
            eps = 1.0 * (1.0 - it / a.iterations)
            new = [torch.zeros_like(p) for p in params]
            for _ in range(a.meta_batch):
                x, y = train.sample(a.ways, k)
                fast = adapt(x, y, a.inner_steps, True)
                for acc, q in zip(new, fast.parameters()):
                    acc += q.detach() / a.meta_batch
            with torch.no_grad():
                for p, m in zip(params, new):
                    p += eps * (m - p)
            continue
        opt.zero_grad()
        for _ in range(a.meta_batch):
            x, y = train.sample(a.ways, k)
            xs, ys, xq, yq = split_support_query(x, y, a.ways, a.shots, a.queries)
            fast = adapt(xs, ys, a.inner_steps, True)
            (F.cross_entropy(fast(xq), yq) / a.meta_batch).backward()
        opt.step()
    train_s = time.perf_counter() - t0

    accs = []
    t1 = time.perf_counter()
    for _ in range(a.eval_episodes):
        x, y = test.sample(a.ways, k)
        xs, ys, xq, yq = split_support_query(x, y, a.ways, a.shots, a.queries)
        fast = adapt(xs, ys, a.eval_steps, True)
        with torch.no_grad():
            accs.append((fast(xq).argmax(-1) == yq).float().mean().item())
    n = len(accs)
    mean = sum(accs) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in accs) / max(n - 1, 1))
    print(json.dumps({
        "impl": "learn2learn" if a.algorithm != "reptile" else "pytorch",
        "algorithm": a.algorithm, "ways": a.ways, "shots": a.shots, "queries": a.queries,
        "iterations": a.iterations, "meta_batch": a.meta_batch, "inner_steps": a.inner_steps,
        "eval_steps": a.eval_steps, "inner_lr": a.inner_lr, "meta_lr": a.meta_lr,
        "accuracy": mean, "ci95": 1.96 * sd / math.sqrt(n), "episodes": n,
        "train_s": train_s, "eval_s": time.perf_counter() - t1, "threads": a.threads, "seed": a.seed,
        "torch": torch.__version__, "learn2learn": l2l.__version__,
    }))


if __name__ == "__main__":
    main()
