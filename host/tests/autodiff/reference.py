"""SPEC §1 once more, independently of the Rust code: numpy in float64 with its own small
reverse-mode automatic differentiation, where the spike's backward is the SuperSpike surrogate
(SPEC §1.2) and the reset factor is a constant (§1.5).

Sparse mode too: the spike buffers of SPEC §2 with the over-capacity policy the README states
(spikes before near-threshold ids, lowest ids first in each, capacity ceil(F * N); what does not
fit did not spike), the surrogate only on the gradient set.

Drives the `spiketile` CLI through its public interface only, as an outside check would:
writes SHD-layout HDF5 data (h5py) and a tensors-only safetensors file of initial weights,
runs `train` for one SGD step (the gradient is (W0 - W1) / lr) and `eval` (predictions and
output spike counts), and compares both with the reference.

Usage: python3 reference.py PATH/TO/spiketile   (exit status 0 when everything agrees)
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import h5py
import numpy as np

# Largest relative gradient error allowed: float32 rounding of the CLI's sums and of
# W0 - lr * grad, against float64 here.
GRAD_TOLERANCE = 1e-4


class Var:
    """A value and, after `backward`, dL/dvalue."""

    def __init__(self, val, parents=(), back=None):
        self.val = np.asarray(val, dtype=np.float64)
        self.parents = parents
        self.back = back  # grad -> grads of the parents
        self.grad = None


def const(x):
    return Var(x)


def add(a, b):
    return Var(a.val + b.val, (a, b), lambda g: [g, g])


def mul(a, b):
    return Var(a.val * b.val, (a, b), lambda g: [g * b.val, g * a.val])


def scale(a, s):
    return Var(a.val * s, (a,), lambda g: [g * s])


def linear(w, x):
    """x [B, M] times w [N, M] transposed: [B, N]."""
    return Var(x.val @ w.val.T, (w, x), lambda g: [g.T @ x.val, g @ w.val])


def capacity(fraction, n):
    """K = ceil(fraction * n) (SPEC §2), at least 1."""
    return max(1, min(n, int(np.ceil(round(fraction * n, 9)))))


def first_k(mask, k):
    """Per row of a boolean [B, N] mask, only its first k set entries (the lowest ids)."""
    return mask & (np.cumsum(mask, axis=1) <= k)


DROPPED = [0]  # spikes and near-threshold ids the buffers dropped, for the checks' report


def spike(u, theta, beta, window, k):
    """The layer's spike buffer of capacity k (SPEC §2: spikes before near-threshold neurons,
    lowest ids first in each; what does not fit did not spike). Forward: the kept spikes;
    backward: SuperSpike on the gradient set (kept spikes and kept near-threshold ids), zero
    elsewhere (SPEC §1.2)."""
    spikes = first_k(u.val >= theta, k)
    near = first_k((u.val >= theta - window) & (u.val < theta), k - spikes.sum(axis=1, keepdims=True))
    DROPPED[0] += int((u.val >= theta - window).sum() - spikes.sum() - near.sum())
    sg = 1.0 / (beta * np.abs(u.val - theta) + 1.0) ** 2
    sg = np.where(spikes | near, sg, 0.0)
    return Var(spikes.astype(np.float64), (u,), lambda g: [g * sg])


def backward(out):
    order, seen = [], set()
    stack = [(out, False)]
    while stack:
        v, done = stack.pop()
        if done:
            order.append(v)
            continue
        if id(v) in seen:
            continue
        seen.add(id(v))
        stack.append((v, True))
        stack.extend((p, False) for p in v.parents)
    out.grad = np.ones_like(out.val)
    for v in reversed(order):
        if v.back is not None and v.grad is not None:
            for p, gp in zip(v.parents, v.back(v.grad)):
                p.grad = gp if p.grad is None else p.grad + gp


def loss(counts, labels, kind):
    """SPEC §1.3 on counts [B, C], averaged over the batch."""
    c = counts.val
    b = c.shape[0]
    e = np.exp(c - c.max(axis=1, keepdims=True))
    sm = e / e.sum(axis=1, keepdims=True)
    onehot = np.eye(c.shape[1])[labels]
    if kind == "ce-count":
        val = -np.log(sm[np.arange(b), labels]).sum() / b
        grad = (sm - onehot) / b
    else:
        d = sm - onehot
        val = (d**2).sum() / b
        gsm = 2 * d / b
        grad = sm * (gsm - (gsm * sm).sum(axis=1, keepdims=True))
    return Var(val, (counts,), lambda g: [g * grad])


def forward(ws, vs, x, p):
    """SPEC §1.1 and §1.4. x [T, B, N0] binary input; returns output counts [B, C]."""
    steps, batch, n_in = x.shape
    k_in = capacity(p["max_activity"], n_in)
    src = [const(first_k(x[t] > 0, k_in).astype(np.float64)) for t in range(steps)]
    DROPPED[0] += int(x.sum() - sum(s.val.sum() for s in src))
    for l, w in enumerate(ws):
        n, m = w.val.shape
        out_layer = l == len(ws) - 1
        window = p["output_window"] if out_layer else p["window"]
        k = n if out_layer else capacity(p["max_activity"], n)
        u = const(np.zeros((batch, n)))
        prev = const(np.zeros((batch, n)))
        outs = []
        for t in range(steps):
            i_t = linear(w, src[t - 1] if t > 0 else const(np.zeros((batch, m))))
            if vs[l] is not None:
                i_t = add(i_t, linear(vs[l], prev))
            keep = const(1.0 - prev.val)
            u = add(scale(mul(u, keep), p["alpha"]), scale(i_t, 1.0 - p["alpha"]))
            prev = spike(u, p["theta"], p["beta"], window, k)
            outs.append(prev)
        src = outs
    counts = src[0]
    for s in src[1:]:
        counts = add(counts, s)
    return counts


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        a = np.ascontiguousarray(arr, dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, m in header.items():
        if name != "__metadata__":
            a, b = m["data_offsets"]
            out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(m["shape"]).copy()
    return out


def write_shd(path, times, units, labels):
    with h5py.File(path, "w") as f:
        t = f.create_dataset("spikes/times", (len(times),), dtype=h5py.vlen_dtype(np.float32))
        u = f.create_dataset("spikes/units", (len(units),), dtype=h5py.vlen_dtype(np.uint16))
        for i in range(len(times)):
            t[i] = times[i]
            u[i] = units[i]
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint16))


def cli(binary, args):
    r = subprocess.run([binary] + args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"spiketile {' '.join(args)} failed:\n{r.stdout}{r.stderr}")


def check(binary, name, widths, batch, steps, seed, recurrent=False, kind="ce-count",
          window="inf", max_activity="1", tiles=(), threads="2", lr=100.0):
    """One SGD step and `eval` of a random network on random data; returns the failures."""
    rng = np.random.default_rng(seed)
    n_in, classes, duration = widths[0], widths[-1], 1.0
    x = np.zeros((steps, batch, n_in))
    times, units = [], []
    for b in range(batch):
        k = int(rng.integers(5, 10)) * steps
        # The last channel and the last class never occur: the weights' shapes say they exist.
        tt = rng.uniform(0, duration, size=k).astype(np.float32)
        uu = rng.integers(0, n_in - 1, size=k)
        for s, ch in zip(np.floor(tt.astype(np.float64) / duration * steps).astype(int), uu):
            x[min(s, steps - 1), b, ch] = 1.0
        times.append(tt)
        units.append(uu)
    labels = rng.integers(0, classes - 1, size=batch)
    ws, vs, tensors = [], [], {}
    for l in range(len(widths) - 1):
        gain = 60.0 if l == len(widths) - 2 else 24.0
        a = gain / np.sqrt(widths[l])
        w = rng.uniform(-a, a, size=(widths[l + 1], widths[l])).astype(np.float32)
        tensors[f"layers.{l}.weight"] = w
        ws.append(Var(w))
        if recurrent and l < len(widths) - 2:
            v = rng.uniform(-a / 2, a / 2, size=(widths[l + 1], widths[l + 1])).astype(np.float32)
            tensors[f"layers.{l}.recurrent"] = v
            vs.append(Var(v))
        else:
            vs.append(None)
    p = {"alpha": 0.95, "theta": 1.0, "beta": 10.0, "window": float(window),
         "output_window": float("inf"), "max_activity": float(max_activity)}
    DROPPED[0] = 0
    counts = forward(ws, vs, x, p)
    dropped = DROPPED[0]
    if float(max_activity) < 1 and dropped == 0:
        failures_early = [f"{name}: nothing overflowed (the test needs smaller buffers)"]
    else:
        failures_early = []
    total = loss(counts, labels, kind)
    backward(total)
    with tempfile.TemporaryDirectory() as d:
        data, init = os.path.join(d, "data.h5"), os.path.join(d, "init.safetensors")
        out, pred = os.path.join(d, "out.safetensors"), os.path.join(d, "pred.csv")
        write_shd(data, times, units, labels)
        write_safetensors(init, tensors)
        model = ["--time-steps", str(steps), "--duration", str(duration), "--max-activity", max_activity,
                 "--window", window, "--loss", kind, "--threads", threads] + list(tiles)
        if recurrent:
            model.append("--recurrent")
        cli(binary, ["train", "--data", data, "--init", init, "--optimizer", "sgd", "--lr",
                     str(lr), "--batch-size", str(batch), "--max-steps", "1", "--no-shuffle",
                     "--quiet", "--save", out] + model)
        cli(binary, ["eval", "--checkpoint", init, "--data", data, "--predictions", pred] + model)
        trained = read_safetensors(out)
        with open(pred) as f:
            rows = [line.split(",") for line in f.read().split()[1:]]
    failures, worst = failures_early, 0.0
    for l in range(len(ws)):
        for key, var in ((f"layers.{l}.weight", ws[l]), (f"layers.{l}.recurrent", vs[l])):
            if var is None:
                continue
            got = (tensors[key].astype(np.float64) - trained[key]) / lr
            top = np.abs(var.grad).max()
            if top == 0:
                failures.append(f"{name}: {key} has no gradient (the test needs a busier network)")
                continue
            err = np.abs(got - var.grad).max() / top
            worst = max(worst, err)
            if err > GRAD_TOLERANCE:
                failures.append(f"{name}: {key} gradient differs by {err:.2e} of its largest entry")
    c = counts.val
    if c.sum() == 0:
        failures.append(f"{name}: the output never spikes (the test needs a busier network)")
    for b, r in enumerate(rows):
        want = [b, int(labels[b]), int(c[b].argmax())] + [int(v) for v in c[b]]
        if [int(v) for v in r] != want:
            failures.append(f"{name}: eval row {b} is {r}, the reference says {want}")
    if len(rows) != batch:
        failures.append(f"{name}: eval wrote {len(rows)} rows for {batch} samples")
    print(f"{name}: loss {float(total.val):.5f}, {c.sum():.0f} output spikes, {dropped} dropped, "
          f"worst gradient error {worst:.1e}")
    return failures


def main():
    binary = sys.argv[1]
    failures = []
    failures += check(binary, "40-30-5 ce-count", [40, 30, 5], 6, 30, 1)
    failures += check(binary, "40-24-16-4 mse-count, 1 thread", [40, 24, 16, 4], 5, 25, 2,
                      kind="mse-count", threads="1")
    failures += check(binary, "30-20-3 recurrent", [30, 20, 3], 4, 20, 3, recurrent=True)
    failures += check(binary, "40-30-5 on tiles of 7 neurons and 2 samples", [40, 30, 5], 6, 30,
                      4, tiles=("--max-neurons-per-tile", "7", "--max-samples-per-tile", "2"))
    failures += check(binary, "40-30-5 window 0.3", [40, 30, 5], 6, 30, 5, window="0.3")
    failures += check(binary, "40-30-5 sparse: capacity 0.1, window 0.1", [40, 30, 5], 6, 30, 6,
                      window="0.1", max_activity="0.1")
    failures += check(binary, "40-30-5 sparse on tiles of 7 neurons and 2 samples", [40, 30, 5], 6,
                      30, 7, window="0.2", max_activity="0.15",
                      tiles=("--max-neurons-per-tile", "7", "--max-samples-per-tile", "2"))
    failures += check(binary, "30-20-3 recurrent sparse", [30, 20, 3], 4, 20, 10, recurrent=True,
                      window="0.1", max_activity="0.2")
    for f in failures:
        print("FAIL", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
