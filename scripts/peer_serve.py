"""The Python peer of `perennial serve`'s prediction path, for side-by-side speed tests.

A FastAPI + uvicorn server doing the Rust server's work when it teaches and predicts:
the same encoder weights (a ProtoNet run's `best.safetensors`), image conversion,
shift-averaged features and prototype rule. It has no accounts, storage, unknown flag
or consolidation (`unknown` is always false). One lock serialises the learner.

    bash scripts/peer_serve_setup.sh            # the virtualenv, once
    ~/.cache/perennial/peer-serve-venv/bin/python scripts/peer_serve.py \\
        --encoder runs/lake-60w5s-3k --port 8081 [--host 127.0.0.1] [--threads 2]

Endpoints (multipart parts named `image`, one or more PNG/JPEG files each):
  POST /v1/classes/{label}/examples -> 201 {"class", "added", "examples"}
  POST /v1/predict -> {"predictions": [{"id", "label", "probability", "unknown",
                                        "unknown_score", "top": [{"label", "probability"}]}]}
  GET  /healthz -> ok

What it mirrors in the Rust code:
  - images (perennial-data folder.rs `load_image`, imageops.rs): the image crate's
    `to_luma8` (grey as decoded, alpha dropped, colour as f32 Rec. 709 luma rounded to
    8 bits, 16-bit grey as round(v/257)); ink = 1 - g/255 in f32; the antialiased
    bilinear resize to the run's side (none at that size), with Rust's f64 sums;
  - the encoder (nn/backbone.rs `Conv4`, protonet.rs `embed_eval`): four blocks of conv
    3x3 (channels-last weights, as on Rust's CPU path) -> batch norm with the run's
    running statistics -> ReLU -> max-pool 2, flattened;
  - shift averaging (nn/shift.rs, lifelong `Encoding`): the mean of the features of the
    (2r+1)^2 translations by up to r pixels (default 1) with zero fill, the
    untranslated images first, then (dy, dx) row-major, one batch each;
  - prototypes (lifelong/prototypes.rs): a class's running f32 sum of features over its
    count; scores -(|x|^2 - 2 x.p + |p|^2) clamped, or scale * cos for a cosine run;
    a float64 softmax; the top 5.
"""
import argparse
import io
import re
import threading
import tomllib
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import uvicorn
from fastapi import FastAPI, File, HTTPException, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse
from PIL import Image
from safetensors.torch import load_file

TOP = 5
# The Y row of the sRGB (BT.709, D65) RGB -> XYZ matrix, the image crate's luma weights.
LUMA = np.array([0.2126390, 0.7151687, 0.0721923], dtype=np.float32)


def to_luma8(img):
    """8-bit grey levels of a decoded image, as the image crate's `to_luma8` makes them."""
    if img.mode in ("1", "L", "LA"):
        return np.asarray(img.getchannel(0).convert("L"))
    if img.mode.startswith("I"):  # 16-bit grey: round(v * 255 / 65535)
        return ((np.asarray(img).astype(np.uint32) + 128) // 257).astype(np.uint8)
    rgb = np.asarray(img.convert("RGB")).astype(np.float32) * np.float32(1.0 / 255.0)
    luma = np.zeros(rgb.shape[:2], dtype=np.float32)
    for c in range(3):  # mul_add: one rounding per step
        luma = (rgb[..., c].astype(np.float64) * LUMA[c] + luma).astype(np.float32)
    scaled = np.clip(luma * np.float32(255.0), 0, 255).astype(np.float64)
    return np.floor(scaled + 0.5).astype(np.uint8)  # Rust's round: halves away from 0


def filter_taps(n_in, n_out):
    """imageops.rs `filter_weights` as (first index + k, weight) arrays `[n_out, taps]`."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    rows = []
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo = int(max(np.floor(center - support + 0.5), 0.0))
        hi = min(int(np.floor(center + support + 0.5)), n_in)
        ws = [max(1.0 - abs((j + 0.5 - center) / support), 0.0) for j in range(lo, hi)]
        total = sum(ws)
        rows.append((lo, [w / total for w in ws] if total > 0.0 else ws))
    taps = max(len(ws) for _, ws in rows)  # shorter rows padded with weight-0 taps
    return (np.array([[min(lo + k, n_in - 1) for k in range(taps)] for lo, _ in rows]),
            np.array([ws + [0.0] * (taps - len(ws)) for _, ws in rows]))


def resize_bilinear_aa(src, oh, ow):
    """imageops.rs `resize_bilinear_aa`: a horizontal then a vertical pass, each an f64
    sum of taps in order, stored as f32."""
    h, w = src.shape
    cidx, cw = filter_taps(w, ow)
    tmp = np.zeros((h, ow))
    for k in range(cidx.shape[1]):
        tmp = tmp + cw[:, k] * src[:, cidx[:, k]].astype(np.float64)
    tmp = tmp.astype(np.float32).astype(np.float64)
    ridx, rw = filter_taps(h, oh)
    out = np.zeros((oh, ow))
    for k in range(ridx.shape[1]):
        out = out + rw[:, k, None] * tmp[ridx[:, k], :]
    return out.astype(np.float32)


def load_image(data, side):
    """folder.rs `load_image` on a file's bytes: `side x side` ink in [0, 1]."""
    grey = to_luma8(Image.open(io.BytesIO(data)))
    ink = np.float32(1.0) - grey.astype(np.float32) / np.float32(255.0)
    return ink if ink.shape == (side, side) else resize_bilinear_aa(ink, side, side)


class Conv4(torch.nn.Module):
    """Four blocks of [conv 3x3 -> batch norm -> ReLU -> max-pool 2], flattened."""

    def __init__(self, in_channels, hidden):
        super().__init__()
        for i in range(4):
            cin = in_channels if i == 0 else hidden
            self.add_module(f"conv{i}", torch.nn.Conv2d(cin, hidden, 3, padding=1))
            self.add_module(f"bn{i}", torch.nn.BatchNorm2d(hidden))

    def forward(self, x):
        for i in range(4):
            x = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x))
            x = F.max_pool2d(F.relu(x), 2)
        return x.flatten(1)


class Learner:
    """A run's encoder with shift averaging, and one prototype per class."""

    def __init__(self, run_dir, shift):
        run = Path(run_dir)
        config = tomllib.loads((run / "config.toml").read_text())
        proto = config.get("protonet", {})
        backbone = proto.get("backbone", {"kind": "conv4"})
        if config.get("algorithm") != "protonet" or backbone.get("kind", "conv4") != "conv4":
            raise SystemExit(f"{run}: the peer serves ProtoNet runs with a Conv4 backbone")
        self.side = backbone.get("image_size", 28)
        if shift > self.side // 4:
            raise SystemExit(f"--shift-radius: at most {self.side // 4}")
        self.shift = shift
        distance = proto.get("distance", {"kind": "squared-euclidean"})
        self.cosine = distance.get("kind") == "cosine"
        self.scale = distance.get("scale", 10.0)
        weights = run / "best.safetensors"
        named = load_file(weights if weights.is_file() else run / "checkpoint.safetensors")
        state = {k.split(".", 1)[1]: v for k, v in named.items()
                 if k.startswith(("params.", "buffers."))}
        self.net = Conv4(backbone.get("in_channels", 1), backbone.get("hidden", 64))
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
            raise SystemExit(f"{run}: weights do not fit: {missing} {unexpected}")
        self.net = self.net.eval().to(memory_format=torch.channels_last)
        self.labels, self.index, self.sums, self.counts = [], {}, [], []
        self.protos = None
        self.lock = threading.Lock()

    def features(self, images):
        """Shift-averaged features `[n, d]` of ink images `[n, side, side]`."""
        x = torch.from_numpy(np.stack(images)).view(len(images), 1, self.side, self.side)
        if self.shift == 0:
            return self.net(x)
        r, s = self.shift, self.side
        padded = F.pad(x, (r, r, r, r))
        shifts = [(0, 0)] + [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
                             if (dy, dx) != (0, 0)]
        total = None
        for dy, dx in shifts:
            f = self.net(padded[:, :, r - dy:r - dy + s, r - dx:r - dx + s])
            total = f if total is None else total + f
        return total / len(shifts)

    def learn(self, label, images):
        with self.lock, torch.inference_mode():
            feats = self.features(images)
            c = self.index.setdefault(label, len(self.labels))
            for f in feats:
                if c == len(self.labels):
                    self.labels.append(label)
                    self.sums.append(f.clone())
                    self.counts.append(1)
                else:
                    self.sums[c] = self.sums[c] + f
                    self.counts[c] += 1
            self.protos = torch.stack([s / n for s, n in zip(self.sums, self.counts)])
            return self.counts[c]

    def predict(self, images):
        with self.lock, torch.inference_mode():
            if self.protos is None:
                raise HTTPException(409, "it knows no class yet: teach one first")
            f, p = self.features(images), self.protos
            if self.cosine:
                qn = f / (f.norm(2, -1, keepdim=True) + 1e-8)
                pn = p / (p.norm(2, -1, keepdim=True) + 1e-8)
                scores = qn.matmul(pn.T) * self.scale
            else:
                x2 = f.square().sum(1, keepdim=True)
                p2 = p.square().sum(1, keepdim=True).T
                scores = -(x2 - f.matmul(p.T) * 2.0 + p2).clamp_min(0.0)
            probs = scores.double().softmax(1)
            top_p, top_i = probs.topk(min(TOP, len(self.labels)), 1, True, True)
            labels = list(self.labels)
        out = []
        for ps, idx in zip(top_p.tolist(), top_i.tolist()):
            top = [{"label": labels[i], "probability": q} for q, i in zip(ps, idx)]
            out.append({"id": uuid.uuid4().hex, "label": top[0]["label"],
                        "probability": top[0]["probability"], "unknown": False,
                        "unknown_score": 0.0, "top": top})
        return out


def make_app(learner):
    app = FastAPI()

    @app.exception_handler(HTTPException)
    def error(_request, exc):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    def read(parts):
        try:
            return [load_image(part.file.read(), learner.side) for part in parts]
        except Exception as e:  # Pillow raises many kinds on a bad file
            raise HTTPException(400, f"unreadable image: {e}") from e

    # `:path`: labels may hold a slash (sent as %2F, which Starlette decodes first).
    @app.post("/v1/classes/{label:path}/examples", status_code=201)
    def examples(label: str, image: list[UploadFile] = File(...)):
        if not 1 <= len(label) <= 200 or re.search(r"[\x00-\x1f\x7f-\x9f]", label):
            raise HTTPException(400, "label must be 1 to 200 characters, none of them control")
        images = read(image)
        return {"class": label, "added": len(images), "examples": learner.learn(label, images)}

    @app.post("/v1/predict")
    def predict(image: list[UploadFile] = File(...)):
        return {"predictions": learner.predict(read(image))}

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz():
        return "ok"

    return app


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", required=True, help="a ProtoNet run directory")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--shift-radius", type=int, default=1, help="shift averaging, pixels")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    app = make_app(Learner(args.encoder, args.shift_radius))
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning")


if __name__ == "__main__":
    main()
