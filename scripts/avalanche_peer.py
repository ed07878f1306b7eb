"""Avalanche peer for `perennial continual`: GEM Permuted-MNIST with avalanche-lib 0.6.

Runs the GEM (Lopez-Paz & Ranzato 2017) Permuted-MNIST protocol with Avalanche's own
benchmark builder, strategies and evaluation plugin, so that its accuracy matrix, the
metrics derived from it (ACC, BWT, FWT, forgetting), its wall time and its peak RSS
can be put next to those of `perennial continual`:

    PYTHONPATH=/work/aval-site /work/peer-venv/bin/python scripts/avalanche_peer.py \
        --strategy er --seed 0 [--tasks 20 --train-per-task 1000 ...] [--out FILE]

Prints exactly one JSON line on stdout (everything else goes to stderr):

    {"system": "avalanche", "avalanche": "0.6.0", "torch": ..., "stream":
     "permuted-mnist", "strategy": ..., "seed": ..., "tasks": ..., "acc": ..., "bwt": ...,
     "fwt": ..., "forgetting": ..., "matrix": [[...]], "baseline": [...], "wall_s": ...,
     "load_s": ..., "peak_rss_mb": ..., "threads": ..., "config": {...}}

Protocol (the same as Perennial's):

* Pixels float32 in [0, 1] (x / 255), flattened to 784, no normalisation.
* Task t (0-based) has its own random permutation of the 784 pixels (every task, the
  first included), 1000 training examples drawn without replacement from the 60,000
  training images, and as test set the test images (the first --test-per-task of them,
  all 10,000 by default) under the same permutation. All draws come from
  `numpy.random.default_rng(seed)`, per task in this order: permutation, then training
  indices. Labels are the digits 0..9 for every task (domain-incremental, one head of
  ten outputs, task label 0 everywhere so no task identity reaches the learner).
* Model: Linear(784, h1), ReLU, Linear(h1, h2), ReLU, Linear(h2, 10) (widths from
  --hidden), PyTorch default init after `torch.manual_seed(seed)`.
* Plain SGD (no momentum, no weight decay), one epoch per task, training mini-batch
  --batch (10), evaluation mini-batch 1000, cross-entropy.
* The untrained model is evaluated on the whole test stream once (baseline b[j]); after
  training on experience i the whole test stream is evaluated again (row i of R).
  ACC = mean_j R[T-1][j]; BWT = mean_{j<T-1} (R[T-1][j] - R[j][j]);
  FWT = mean_{j>=1} (R[j-1][j] - b[j]);
  forgetting = mean_{j<T-1} (max_{j<=l<T-1} R[l][j] - R[T-1][j]).
* wall_s: everything after reading MNIST from disk (building the permuted tensors and
  the Avalanche benchmark, the model and the strategy, all training and all
  evaluation); the Python imports and the disk read are not in it (the read is
  load_s). peak_rss_mb: getrusage ru_maxrss / 1024 at the end.

Avalanche API used (0.6.0):

* Benchmark: `avalanche.benchmarks.tensors_benchmark` (alias of
  `create_generic_benchmark_from_tensor_lists`), one experience per task in both the
  train and the test stream, `task_labels=[0] * T`.
* naive: `Naive`; ewc: `EWC(ewc_lambda=λ, mode="separate")`; agem:
  `AGEM(patterns_per_exp=M, sample_size=S)`; er: `Naive` plus
  `ReplayPlugin(mem_size=B, batch_size=batch, batch_size_mem=batch,
  storage_policy=ReservoirSamplingBuffer(B))`.
* Evaluation: `EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])`
  (no logger at all, so no progress printing); R[i][j] is read from the dict that
  `strategy.eval(test_stream)` returns, key
  `Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}`.

Where Avalanche's algorithms differ from Perennial's (left as Avalanche does them):

* ER: Avalanche's `ReplayPlugin` updates its buffer only at the END of each
  experience (`after_training_exp`): `ReservoirSamplingBuffer` gives every example
  seen so far a uniform random weight and keeps the 200 heaviest, which is a uniform
  sample of all past examples, like a reservoir, but applied in one go per experience.
  So during experience t the replayed examples come from tasks 0..t-1 only (never from
  the current task), and during experience 0 there is no replay at all (plain
  batches of 10). An online reservoir (Perennial's) inserts each example as it arrives
  and replays from the start, current-task examples included. When the buffer is
  non-empty each step is 10 current + 10 replayed examples, the replayed ones taken by
  a shuffled pass over the buffer (cycled), not drawn independently per step; the loss
  is the mean cross-entropy over the 20.
* A-GEM: Avalanche keeps `patterns_per_exp` random examples of each finished
  experience (python `random.shuffle`, seeded here with `random.seed(seed)`) and draws
  its reference batch balanced by experience: `sample_size // k` examples from each of
  the k stored experiences, from one endless shuffled loader per experience that does
  not drop its last partial batch, rather than `sample_size` distinct examples drawn
  uniformly from the pooled memory. So the reference batch varies in size (measured
  with 250 / 256: 250 when k = 1; 256 or 244 alternately when k = 2; 255, 255, 240
  when k = 3; at most 13 k = 247 when k = 19). The reference gradient is computed in
  `before_training_iteration` on the weights before the step, as in Perennial.
* EWC: penalty `λ Σ_t Σ_i F_t,i (θ_i - θ*_t,i)²` (no 1/2), F_t the mean over the task's
  mini-batches (of --batch examples, in order) of the squared gradient of the batch-mean
  loss, computed after training on the task; Perennial copies this definition.
* Perennial's --test-per-task N takes a random N of the test images; here it takes the
  first N (as asked for this peer). With the default (all 10,000) the sets are equal.
* Random draws (permutations, training subsets, shuffling order) come from numpy's and
  torch's generators, not Perennial's, so the runs see different but equally distributed
  tasks and orders; compare means over seeds, not single numbers.
"""
import argparse
import contextlib
import gzip
import json
import os
import random
import resource
import sys
import time
import warnings

# qpsolvers (pulled in by avalanche's GEM) warns at import time that no QP solver is
# installed; none of the strategies used here needs one.
warnings.filterwarnings("ignore", message="no QP solver found")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STRATEGIES = ("naive", "ewc", "agem", "er")
PIXELS = 784


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        bad_args(message)


def bad_args(message):
    print(f"avalanche_peer.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv):
    p = _Parser(description=__doc__.split("\n")[0])
    p.add_argument("--strategy", required=True, choices=STRATEGIES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--train-per-task", type=int, default=1000)
    p.add_argument("--test-per-task", type=int, default=None,
                   help="first N test images per task (default: all 10,000)")
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--hidden", default="100,100")
    p.add_argument("--buffer", type=int, default=200, help="er: replay buffer size")
    p.add_argument("--ewc-lambda", type=float, default=10.0)
    p.add_argument("--memory-per-task", type=int, default=250, help="agem")
    p.add_argument("--agem-sample", type=int, default=256, help="agem")
    p.add_argument("--data", default=None,
                   help="MNIST directory, or its parent holding mnist/ "
                        "(default: $PERENNIAL_DATA or ../shared/data)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also append the JSON line to this file")
    a = p.parse_args(argv)

    if a.seed < 0:
        bad_args(f"--seed {a.seed}: must be >= 0")
    if a.tasks < 1:
        bad_args(f"--tasks {a.tasks}: must be >= 1")
    if not 1 <= a.train_per_task <= 60000:
        bad_args(f"--train-per-task {a.train_per_task}: must be in 1..60000")
    if a.test_per_task is not None and not 1 <= a.test_per_task <= 10000:
        bad_args(f"--test-per-task {a.test_per_task}: must be in 1..10000")
    if a.batch < 1:
        bad_args(f"--batch {a.batch}: must be >= 1")
    if not (a.lr > 0 and a.lr < float("inf")):
        bad_args(f"--lr {a.lr}: must be a positive number")
    try:
        a.hidden_sizes = [int(h) for h in a.hidden.split(",") if h.strip() != ""]
    except ValueError:
        bad_args(f"--hidden {a.hidden!r}: expected comma-separated widths, e.g. 100,100")
    if any(h < 1 for h in a.hidden_sizes):
        bad_args(f"--hidden {a.hidden!r}: widths must be >= 1")
    if a.buffer < 1:
        bad_args(f"--buffer {a.buffer}: must be >= 1")
    if not (a.ewc_lambda >= 0 and a.ewc_lambda < float("inf")):
        bad_args(f"--ewc-lambda {a.ewc_lambda}: must be >= 0")
    if a.memory_per_task < 1:
        bad_args(f"--memory-per-task {a.memory_per_task}: must be >= 1")
    if a.agem_sample < 1:
        bad_args(f"--agem-sample {a.agem_sample}: must be >= 1")
    if a.threads < 1:
        bad_args(f"--threads {a.threads}: must be >= 1")
    if a.data is None:
        a.data = os.environ.get("PERENNIAL_DATA") or os.path.join(REPO, "..", "shared", "data")
    return a


def read_idx(path):
    """An IDX file (gzip) as a numpy array of its declared shape."""
    import numpy as np
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {data.size} bytes for shape {shape}")
    return data.reshape(shape)


def load_mnist(data_dir):
    names = {
        "train_x": "train-images-idx3-ubyte.gz",
        "train_y": "train-labels-idx1-ubyte.gz",
        "test_x": "t10k-images-idx3-ubyte.gz",
        "test_y": "t10k-labels-idx1-ubyte.gz",
    }
    if os.path.isdir(os.path.join(data_dir, "mnist")):  # as Perennial: DIR or DIR/mnist
        data_dir = os.path.join(data_dir, "mnist")
    out = {}
    for key, name in names.items():
        path = os.path.join(data_dir, name)
        if not os.path.isfile(path):
            bad_args(f"--data {data_dir}: missing {name}")
        out[key] = read_idx(path)
    return out


def metrics_from_matrix(R, b):
    T = len(R)
    acc = sum(R[T - 1]) / T
    if T > 1:
        bwt = sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)
        fwt = sum(R[j - 1][j] - b[j] for j in range(1, T)) / (T - 1)
        forgetting = sum(
            max(R[l][j] for l in range(j, T - 1)) - R[T - 1][j] for j in range(T - 1)
        ) / (T - 1)
    else:
        bwt = fwt = forgetting = 0.0
    return acc, bwt, fwt, forgetting


def main(argv):
    args = parse_args(argv)

    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(args.threads)
    except RuntimeError as e:  # only possible before any inter-op work
        warnings.warn(f"set_num_interop_threads: {e}")
    import avalanche
    from avalanche.benchmarks import tensors_benchmark
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import ReservoirSamplingBuffer
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.supervised import AGEM, EWC, Naive

    # --- load (timed separately) ---
    t0 = time.perf_counter()
    mn = load_mnist(args.data)
    load_s = time.perf_counter() - t0

    # --- everything else ---
    t1 = time.perf_counter()
    train_x = mn["train_x"].reshape(-1, PIXELS)
    train_y = mn["train_y"].astype(np.int64)
    n_test = args.test_per_task or mn["test_x"].shape[0]
    if n_test > mn["test_x"].shape[0]:
        bad_args(f"--test-per-task {n_test}: only {mn['test_x'].shape[0]} test images")
    if args.train_per_task > train_x.shape[0]:
        bad_args(f"--train-per-task {args.train_per_task}: only {train_x.shape[0]} images")
    test_x = mn["test_x"].reshape(-1, PIXELS)[:n_test].astype(np.float32) / 255.0
    test_y = torch.from_numpy(mn["test_y"][:n_test].astype(np.int64))

    rng = np.random.default_rng(args.seed)
    train_tensors, test_tensors = [], []
    for _ in range(args.tasks):
        perm = rng.permutation(PIXELS)
        idx = rng.choice(train_x.shape[0], size=args.train_per_task, replace=False)
        x = train_x[idx][:, perm].astype(np.float32) / 255.0
        train_tensors.append([torch.from_numpy(np.ascontiguousarray(x)),
                              torch.from_numpy(train_y[idx])])
        test_tensors.append([torch.from_numpy(np.ascontiguousarray(test_x[:, perm])),
                             test_y])
    del test_x

    benchmark = tensors_benchmark(
        train_tensors=train_tensors,
        test_tensors=test_tensors,
        task_labels=[0] * args.tasks,
    )
    del train_tensors, test_tensors
    train_stream, test_stream = benchmark.train_stream, benchmark.test_stream

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    widths = [PIXELS] + args.hidden_sizes
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(widths[-1], 10))
    model = torch.nn.Sequential(*layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.0,
                                weight_decay=0.0)
    criterion = torch.nn.CrossEntropyLoss()
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])
    common = dict(
        model=model,
        optimizer=optimizer,
        criterion=criterion,
        train_mb_size=args.batch,
        train_epochs=1,
        eval_mb_size=1000,
        device="cpu",
        evaluator=evaluator,
        eval_every=-1,
    )
    if args.strategy == "naive":
        strategy = Naive(**common)
    elif args.strategy == "ewc":
        strategy = EWC(ewc_lambda=args.ewc_lambda, mode="separate", **common)
    elif args.strategy == "agem":
        strategy = AGEM(patterns_per_exp=args.memory_per_task,
                        sample_size=args.agem_sample, **common)
    else:
        replay = ReplayPlugin(
            mem_size=args.buffer,
            batch_size=args.batch,
            batch_size_mem=args.batch,
            storage_policy=ReservoirSamplingBuffer(max_size=args.buffer),
        )
        strategy = Naive(plugins=[replay], **common)

    def eval_row():
        evaluator.reset_last_metrics()
        res = strategy.eval(test_stream)
        row = []
        for j in range(args.tasks):
            key = f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}"
            if key not in res:
                raise KeyError(f"metric {key} missing from strategy.eval() result; "
                               f"keys: {sorted(res)[:5]}...")
            row.append(float(res[key]))
        return row

    baseline = eval_row()
    matrix = []
    for i, exp in enumerate(train_stream):
        strategy.train(exp)
        matrix.append(eval_row())
        print(f"[avalanche {args.strategy}] task {i + 1}/{args.tasks}: "
              f"R[i][i]={matrix[-1][i]:.4f} mean={sum(matrix[-1][:i + 1]) / (i + 1):.4f} "
              f"({time.perf_counter() - t1:.1f}s)", file=sys.stderr, flush=True)
    wall_s = time.perf_counter() - t1
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    acc, bwt, fwt, forgetting = metrics_from_matrix(matrix, baseline)
    r6 = lambda v: round(float(v), 6)
    return args, {
        "system": "avalanche",
        "avalanche": getattr(avalanche, "__version__", "unknown"),
        "torch": torch.__version__,
        "stream": "permuted-mnist",
        "strategy": args.strategy,
        "seed": args.seed,
        "tasks": args.tasks,
        "acc": r6(acc),
        "bwt": r6(bwt),
        "fwt": r6(fwt),
        "forgetting": r6(forgetting),
        "matrix": [[r6(v) for v in row] for row in matrix],
        "baseline": [r6(v) for v in baseline],
        "wall_s": round(wall_s, 3),
        "load_s": round(load_s, 3),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "threads": args.threads,
        "config": {
            "train_per_task": args.train_per_task,
            "test_per_task": n_test,
            "batch": args.batch,
            "eval_batch": 1000,
            "lr": args.lr,
            "hidden": args.hidden_sizes,
            "buffer": args.buffer if args.strategy == "er" else None,
            "ewc_lambda": args.ewc_lambda if args.strategy == "ewc" else None,
            "memory_per_task": args.memory_per_task if args.strategy == "agem" else None,
            "agem_sample": args.agem_sample if args.strategy == "agem" else None,
        },
    }


if __name__ == "__main__":
    # Anything a library prints on stdout goes to stderr; stdout carries the JSON only.
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        args, result = main(sys.argv[1:])
    line = json.dumps(result, separators=(",", ":"))
    print(line, file=real_stdout, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
