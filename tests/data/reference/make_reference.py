#!/usr/bin/env python3
"""Independent JAX reference values for the loss files in this directory.

Every `NAME.toml` here has a hand-written twin below (`case_NAME`) that builds the
same data and initial params with NumPy (float64, no RNG) and the same loss with
jax.numpy.  For each case we compute the loss and jax.grad with respect to every
param, once in float64 and once in float32, and write `jax_reference.json`:

    {"source": "jax <version>",
     "cases": {"NAME": {"f64": {"loss": x, "grads": {"p": {"shape": [...], "values": [...]}}},
                        "f32": {...}}}}

`values` are row-major (C order) flattened; a scalar param has shape [] and one value.
float32 follows gradscope's rule: data and initial params are computed in float64 and
then cast; the loss and its gradient are then evaluated entirely in float32.

Semantics follow /tmp/lang_notes.md (the gradscope language decisions):
  gelu is the exact erf form (jax.nn.gelu defaults to the tanh approximation!),
  norm(x[, axis]) = sqrt(sum(x^2[, axis])), reductions drop the axis,
  softmax / log_softmax default to axis -1, `@` is NumPy matmul, `^` is pow.

Self-checks run before anything is written (the script fails if one does not hold):
  1. a small, independent interpreter of the gradscope language reads each TOML file,
     evaluates its [data], [consts], [params] and loss program with jax.numpy, and must
     agree with the hand-written twin (data, params, loss and every gradient);
  2. the same interpreter records how far every kink-like argument is from its kink
     (abs, relu, clamp bounds, min/max ties, amax/amin ties, < <= > >= operands) and
     the domain margin of log/sqrt/pow: every margin must be >= MIN_MARGIN;
  3. jax.grad agrees with central finite differences in float64 (detach(...) held at
     its value at the initial params);
  4. float32 and float64 results agree to float32 accuracy.

Usage:  pip install jax   (CPU)   then   python3 make_reference.py
"""

import json
import math
import pathlib
import re
import sys
import tomllib

import numpy as np
import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from jax.scipy.special import erf as jerf  # noqa: E402
from jax.scipy.special import logsumexp as jlogsumexp  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "jax_reference.json"
MIN_MARGIN = 0.05

# --------------------------------------------------------------------------------------
# The language's functions, with the semantics of lang_notes.md
# --------------------------------------------------------------------------------------


def sqr(x):
    return x * x


def sigmoid(x):
    return jax.nn.sigmoid(x)


def softplus(x):
    # log(1 + exp(x)) computed as logaddexp(x, 0): no overflow for large |x|
    return jax.nn.softplus(x)


def relu(x):
    return jax.nn.relu(x)


def gelu(x):
    # exact erf form, as PyTorch's default; NOT jax.nn.gelu's default (tanh approximation)
    return jax.nn.gelu(x, approximate=False)


def elu(x, alpha=1.0):
    return jax.nn.elu(x, alpha)


def silu(x):
    return jax.nn.silu(x)


def clamp(x, lo, hi):
    return jnp.clip(x, lo, hi)


def norm(x, axis=None):
    return jnp.sqrt(jnp.sum(x * x, axis=axis))


def logsumexp(x, axis=None):
    return jlogsumexp(x, axis=axis)


def softmax(x, axis=-1):
    return jax.nn.softmax(x, axis=axis)


def log_softmax(x, axis=-1):
    return jax.nn.log_softmax(x, axis=axis)


def transpose(x):
    return jnp.swapaxes(x, -1, -2)


# detach normally stops the gradient.  For the finite-difference self-check it can record
# its values at the initial params and replay them as constants while params are perturbed,
# which is exactly the function whose derivative a stopped gradient is.
_DETACH = {"mode": None, "tape": [], "i": 0}


def detach(x):
    if _DETACH["mode"] == "record":
        _DETACH["tape"].append(np.asarray(x))
    elif _DETACH["mode"] == "replay":
        v = _DETACH["tape"][_DETACH["i"]]
        _DETACH["i"] += 1
        return jnp.asarray(v, x.dtype)
    return jax.lax.stop_gradient(x)


def lit(values, dt):
    """An array literal inside a loss program: a tensor of the run's dtype."""
    return jnp.asarray(values, dtype=dt)


# --------------------------------------------------------------------------------------
# Hand-written twins of the TOML files.  Each returns (data, consts, params, loss) where
# data/params are float64 NumPy arrays and loss(P, D, C, dt) is written in jax.numpy.
# --------------------------------------------------------------------------------------


def case_unary_functions():
    data = {"u": np.linspace(0.2, 1.2, 6)}
    params = {"x": (np.sin(np.arange(54) + 0.5) * 2.2).reshape(9, 6)}

    def loss(P, D, C, dt):
        x, u = P["x"], D["u"]
        e = jnp.exp(x[0])
        l = jnp.log(x[1] + 3)
        l1 = jnp.log1p(x[2] + 1.5)
        s = jnp.sqrt(x[3] + 2.5)
        a = jnp.abs(x[4])
        q = sqr(x[5])
        sn = jnp.sin(x[6])
        cs = jnp.cos(x[7])
        th = jnp.tanh(x[8])
        total = e + l + l1 + s + a + q + sn + cs + th
        return jnp.sum(u * total) + 0.1 * jnp.sum(sqr(total))

    return data, {}, params, loss


def case_activations():
    data = {"u": np.array([0.3, -0.7, 1.1, 0.5, -1.3, 0.9])}
    params = {"z": (np.cos(0.7 * np.arange(48) + 0.2) * 2.5).reshape(8, 6)}

    def loss(P, D, C, dt):
        z, u = P["z"], D["u"]
        sg = sigmoid(z[0])
        sp = softplus(z[1])
        rl = relu(z[2])
        ge = gelu(z[3])
        el = elu(z[4])
        ea = elu(z[5], 0.5)
        si = silu(z[6])
        er = jerf(z[7])
        total = sg + sp + rl + ge + el + ea + si + er
        return jnp.sum(u * total) + 0.1 * jnp.sum(total * total)

    return data, {}, params, loss


def case_binary_ops():
    data = {"k": np.arange(6.0).reshape(2, 3)}
    params = {
        "a": np.array([[-1.3, -0.35, 0.45], [0.95, -0.7, 1.2]]),
        "b": np.array([[0.4, -0.9, 1.1], [0.15, -0.2, -1.45]]),
        "p": np.array([[0.6, 1.3, 2.1], [0.85, 1.7, 0.45]]),
        "q": np.array([[1.5, -0.6, 0.8], [2.2, -1.1, 0.35]]),
    }

    def loss(P, D, C, dt):
        a, b, p, q, k = P["a"], P["b"], P["p"], P["q"], D["k"]
        mm = jnp.minimum(a, b) + 2 * jnp.maximum(a, b)
        c = clamp(a, -0.5, 0.8)
        pw = jnp.power(p, q) + p**q + p**0.5 + a**2 + a**3 + jnp.power(a, 2) + jnp.power(b, 3.0)
        neg = -(a**2) + (-(p**q)) * 2 + 2 ** (3**0.5) * a - b / p**2
        w1 = jnp.where(a < b, a * b, a - b)
        w2 = jnp.where(a <= 0.3, jnp.sin(b), jnp.cos(b))
        w3 = jnp.where(b > a + 0.1, jnp.exp(a), p)
        w4 = jnp.where(b >= 0, q, -q)
        w5 = jnp.where(k == 2, a, b) + jnp.where(k != 4, p, q)
        w6 = (a > 0).astype(dt) * b + (a < 0).astype(dt) * q
        ar = a + b - p * q / (p + 1) - (a - b) / 3
        return (
            jnp.sum(mm * c)
            + jnp.sum(pw) / 6
            + jnp.sum(neg * q)
            + jnp.sum(w1 + w2 * w3 + w4 * w5 + w6)
            + jnp.mean(ar * ar)
        )

    return data, {}, params, loss


def case_reductions():
    data = {
        "c3": np.array([0.5, -1.0, 1.5]),
        "c4": np.array([1.0, -0.5, 0.25, 2.0]),
        "W23": np.cos(np.arange(6.0)).reshape(2, 3),
        "W24": np.cos(np.arange(8.0) + 1).reshape(2, 4),
        "W34": np.cos(np.arange(12.0) + 2).reshape(3, 4),
    }
    params = {
        "X": (np.sin(np.arange(12.0)) * 1.5).reshape(3, 4),
        "T": (np.sin(0.9 * np.arange(24.0) + 0.4) * 2 + 0.1 * np.arange(24.0)).reshape(2, 3, 4),
    }

    def loss(P, D, C, dt):
        X, T = P["X"], P["T"]
        c3, c4, W23, W24, W34 = D["c3"], D["c4"], D["W23"], D["W24"], D["W34"]
        s = jnp.sum
        whole = s(X) + jnp.mean(X) + jnp.max(X) + jnp.min(X) + logsumexp(X) + norm(X)
        rows = (
            s(s(X, 0) * c4)
            + s(jnp.mean(X, 1) * c3)
            + s(jnp.max(X, -1) * c3)
            + s(jnp.min(X, -2) * c4)
        )
        more = (
            s(logsumexp(X, 0) * c4)
            + s(logsumexp(X, -1) * c3)
            + s(norm(X, 1) * c3)
            + s(norm(X, -2) * c4)
        )
        t1 = (
            s(s(T, 1) * W24)
            + s(jnp.mean(T, -1) * W23)
            + s(jnp.max(T, 0) * W34)
            + s(jnp.min(T, 2) * W23)
        )
        t2 = (
            s(logsumexp(T, -3) * W34)
            + s(norm(T, -1) * W23)
            + s(jnp.mean(T, 0) * W34)
            + s(jnp.max(T, -2) * W24)
        )
        t3 = s(T) * 0.1 + jnp.min(T) + norm(T) + jnp.mean(T) + logsumexp(T) - jnp.max(T)
        return whole + rows + more + t1 + t2 + t3

    return data, {}, params, loss


def case_softmax():
    data = {
        "Y": np.eye(5)[1:5],
        "W": np.cos(np.arange(20.0)).reshape(4, 5),
        "V": np.sin(np.arange(24.0) + 0.5).reshape(2, 3, 4),
    }
    params = {
        "Z": (np.sin(0.9 * np.arange(20.0)) * 2).reshape(4, 5),
        "S": (np.cos(1.7 * np.arange(24.0)) * 1.5).reshape(2, 3, 4),
    }

    def loss(P, D, C, dt):
        Z, S, Y, W, V = P["Z"], P["S"], D["Y"], D["W"], D["V"]
        s = jnp.sum
        ce = -jnp.mean(s(Y * log_softmax(Z), -1))
        s0 = s(softmax(Z, 0) * W)
        s1 = s(softmax(Z) * W)
        l0 = s(log_softmax(Z, 0) * W) + s(log_softmax(Z, -2) * W) * 0.5
        l1 = s(log_softmax(Z, -1) * W)
        s3 = s(softmax(S, 1) * V) + s(log_softmax(S, 1) * V) + s(softmax(S, -1) * V)
        return ce + s0 + s1 + 0.1 * l0 + 0.2 * l1 + s3

    return data, {}, params, loss


def case_stable_large():
    data = {
        "y": np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.0]),
        "c": np.array([0.5, -1.0, 2.0, 1.5, -0.5, 1.0]),
        "Y": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
        "c2": np.array([[0.3, -1.2, 0.8], [1.1, 0.4, -0.6]]),
    }
    params = {
        "z": np.array([-95.0, -31.5, -2.3, 0.7, 27.0, 88.5]),
        "L": np.array([[90.0, -85.0, 3.0], [-40.0, 60.5, 59.0]]),
    }

    def loss(P, D, C, dt):
        z, L, y, c, Y, c2 = P["z"], P["L"], D["y"], D["c"], D["Y"], D["c2"]
        s = jnp.sum
        bce = jnp.mean(softplus(z) - y * z)
        sg = s(sigmoid(z) * c) + s(sigmoid(-z) * z) / 100
        ls = s(logsumexp(L, -1)) + logsumexp(L) / 10
        lsm = -s(log_softmax(L) * Y) + s(log_softmax(L, 0) * c2)
        sm = s(softmax(L) * c2)
        return bce + sg + 0.01 * ls + 0.1 * lsm + sm

    return data, {}, params, loss


def case_broadcasting():
    params = {
        "col": np.array([[0.5], [-1.2], [0.9]]),
        "row": np.array([[1.1, -0.4, 0.3, -1.6]]),
        "v": np.array([0.7, -0.25, 1.35, -0.8]),
        "M": np.cos(np.arange(12.0) + 0.5).reshape(3, 4),
        "s": np.array(0.75),
        "T3": np.linspace(-1.5, 1.3, 8).reshape(2, 1, 4),
    }

    def loss(P, D, C, dt):
        col, row, v, M, s_, T3 = P["col"], P["row"], P["v"], P["M"], P["s"], P["T3"]
        outer = col * row
        diff = col - v
        mv = M + v
        mv2 = M / (v**2 + 1)
        sc = s_ * M + s_
        t = T3 + col
        t2 = T3 * M
        f = jnp.where(col > row, col, row)
        g = jnp.minimum(col, v) + jnp.maximum(row, M) + jnp.power(col**2 + 1, row)
        return (
            jnp.sum(outer * diff)
            + jnp.mean(mv * mv2)
            + jnp.sum(sc) / 10
            + jnp.mean(jnp.sin(t) * t2)
            + jnp.sum(f * M)
            + jnp.sum(g)
        )

    return {}, {}, params, loss


def case_matmul():
    params = {
        "A": np.sin(np.arange(12.0) * 0.8).reshape(3, 4),
        "v": np.array([0.4, -1.1, 0.75, 0.2]),
        "u": np.array([1.3, -0.6, 0.25]),
        "B": np.cos(np.arange(8.0)).reshape(4, 2),
        "BA": (np.sin(np.arange(24.0) + 1) / 2).reshape(2, 3, 4),
        "BB": (np.cos(np.arange(40.0) * 0.3) / 2).reshape(2, 4, 5),
    }

    def loss(P, D, C, dt):
        A, v, u, B, BA, BB = (P[n] for n in ("A", "v", "u", "B", "BA", "BB"))
        mv = jnp.matmul(A, v)
        vm = jnp.matmul(u, A)
        vv = jnp.matmul(v, v)
        mm = jnp.matmul(A, B) + 1
        bmm = jnp.matmul(BA, BB)
        tt = jnp.matmul(transpose(A), u)
        tb = jnp.matmul(transpose(BB), transpose(BA))
        return (
            jnp.sum(mv * u)
            + jnp.sum(jnp.sin(vm))
            + vv
            + jnp.sum(mm**2) / 4
            + jnp.mean(jnp.tanh(bmm))
            + jnp.sum(tt * v)
            + jnp.sum(tb * tb) / 30
        )

    return {}, {}, params, loss


def case_matmul_broadcast():
    data = {"c": np.array([[1.0, -0.5, 0.25, 2.0], [0.5, 1.5, -1.0, 0.75]])}
    params = {
        "T": np.sin(np.arange(24.0) * 0.6 + 0.1).reshape(2, 3, 4),
        "M": np.linspace(-1.0, 1.1, 8).reshape(4, 2),
        "v": np.array([0.4, -1.1, 0.75, 0.2]),
        "u": np.array([1.3, -0.6, 0.25]),
        "N": np.array([[0.5, -0.3, 1.2], [0.8, 0.1, -0.9]]),
    }

    def loss(P, D, C, dt):
        T, M, v, u, N, c = P["T"], P["M"], P["v"], P["u"], P["N"], D["c"]
        r1 = jnp.matmul(T, M)
        r2 = jnp.matmul(T, v)
        r3 = jnp.matmul(u, T)
        r4 = jnp.matmul(N, T)
        return jnp.sum(r1 * r1) / 4 + jnp.sum(jnp.sin(r2)) + jnp.sum(r3 * c) + jnp.mean(jnp.tanh(r4))

    return data, {}, params, loss


def case_indexing_shapes():
    data = {
        "w12": np.linspace(-1.0, 1.0, 12),
        "T3w": np.cos(np.arange(24.0)).reshape(2, 4, 3),
    }
    params = {
        "X": np.sin(np.arange(12.0) + 0.3).reshape(4, 3),
        "v": np.array([0.5, -1.5, 0.8, 1.1, -0.3]),
        "T": np.cos(np.arange(24.0) * 0.45).reshape(2, 3, 4),
    }

    def loss(P, D, C, dt):
        X, v, T, w12, T3w = P["X"], P["v"], P["T"], D["w12"], D["T3w"]
        s = jnp.sum
        r = X[1]
        c = X[:, 0]
        sl = X[1:3]
        lr = X[-1]
        lc = X[:, -1]
        e = v[2] * v[-1] + s(v[1:3] * lit([2.0, -1.0], dt))
        t0 = T[1]
        tc = T[:, 0]
        fl = X.reshape(-1)
        rt = T.reshape(4, -1)
        r3 = X.reshape(2, -1, 3)
        tx = transpose(X)
        tt = transpose(T)
        ch = X[2][1] * X[:, 2][-1] + T.reshape(-1)[5] + (X * 2)[0][2]
        a1 = s(r * lr) + s(c * lc) + s(sl * sl) + e
        a2 = s(t0 * tx) + s(tc * tc) + s(fl * w12) + s(jnp.sin(rt))
        a3 = s(r3 * r3 * r3) + s(tt * T3w) + ch
        return a1 + a2 + 0.5 * a3

    return data, {}, params, loss


def case_program_features():
    X = (np.sin(np.arange(1.0, 25.0, 1.0)) + 0.3 * np.cos(np.arange(24.0))).reshape(8, 3)
    w_true = np.array([1.0, -2.0, 0.5])
    steps = np.arange(0.5, 2.0, 0.5)
    consts = {"lam": 0.01, "scale": 1.5}
    data = {
        "y": X @ w_true + 0.05 * np.cos(np.arange(8.0)),
        "X": X,
        "w_true": w_true,
        "I3": np.eye(3),
        "o3": np.ones(3) + np.zeros(3),
        "fw": np.full(3, 0.1),
        "steps": steps,
    }
    w = np.eye(3) @ steps * consts["scale"] - 1.0
    params = {"w": w, "b": np.array(0.5), "w2": 0.5 * w + 0.1}

    def loss(P, D, C, dt):
        w, b, w2 = P["w"], P["b"], P["w2"]
        X, y, I3, o3, fw, steps = D["X"], D["y"], D["I3"], D["o3"], D["fw"], D["steps"]
        s = jnp.sum
        centre = detach(jnp.mean(w))
        spread = s((w - centre) ** 2)
        frozen = detach(w) * w
        fit = jnp.mean((X @ w + b - y) ** 2)
        reg = C["lam"] * s(jnp.abs(w)) + s(fw * w) + s(I3 @ w2 * steps)
        lit_ = s(w * lit([0.5, -1.0, 2.0], dt)) + (b - 0.25) ** 2 * C["scale"]
        long = s(jnp.exp(-(w2**2)) * (o3 + 0.5 * w))
        return spread + s(frozen) + fit + reg + lit_ + long

    return data, consts, params, loss


def case_mlp_model():
    consts = {"eps": 0.001, "wd": 0.01}
    data = {
        "X": (np.sin(np.arange(18.0) * 1.1) + 0.2).reshape(6, 3),
        "y": np.cos(np.linspace(0.0, 2.5, 6)),
        "Yb": np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]], dtype=np.float64),
    }
    params = {
        "W1": (np.cos(np.arange(12.0) * 0.9) * 0.6).reshape(3, 4),
        "b1": np.array([0.1, -0.2, 0.05, 0.3]),
        "w2": np.array([0.8, -0.5, 0.35, -1.1]),
        "b2": np.array(0.2),
        "W3": (np.sin(np.arange(8.0) + 0.7) * 0.5).reshape(4, 2),
    }

    def loss(P, D, C, dt):
        W1, b1, w2, b2, W3 = (P[n] for n in ("W1", "b1", "w2", "b2", "W3"))
        X, y, Yb = D["X"], D["y"], D["Yb"]
        h = jnp.tanh(X @ W1 + b1)
        pred = h @ w2 + b2
        r = pred - y
        robust = jnp.mean(jnp.log(r**2 + C["eps"]))
        logits = h @ W3
        bce = jnp.mean(jnp.sum(softplus(logits) - Yb * logits, 1))
        l2 = C["wd"] * (jnp.sum(sqr(W1)) + jnp.sum(w2**2))
        return robust + bce + l2

    return data, consts, params, loss


CASES = {
    name[len("case_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")
}

# --------------------------------------------------------------------------------------
# Reference computation
# --------------------------------------------------------------------------------------

DTYPES = {"f64": jnp.float64, "f32": jnp.float32}


def run(loss, data, consts, params, dt):
    D = {k: jnp.asarray(v, dtype=dt) for k, v in data.items()}
    P = {k: jnp.asarray(v, dtype=dt) for k, v in params.items()}
    C = {k: float(v) for k, v in consts.items()}
    value, grads = jax.value_and_grad(lambda P_: loss(P_, D, C, dt))(P)
    assert value.dtype == dt and value.shape == (), (value.dtype, value.shape)
    for g in grads.values():
        assert g.dtype == dt, g.dtype
    return value, grads


def to_json(value, grads):
    out = {"loss": float(value), "grads": {}}
    for name in sorted(grads):
        g = np.asarray(grads[name])
        assert np.all(np.isfinite(g)), name
        out["grads"][name] = {"shape": list(g.shape), "values": [float(x) for x in g.reshape(-1)]}
    assert math.isfinite(out["loss"])
    return out


# --------------------------------------------------------------------------------------
# Self-check 1+2: a small, independent interpreter of the gradscope language
# --------------------------------------------------------------------------------------

TOKEN_RE = re.compile(
    r"""
    (?P<ws>[ \t\r]+) | (?P<comment>\#[^\n]*) | (?P<nl>\n)
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<op><=|>=|==|!=|[-+*/@^<>()\[\],:=])
    """,
    re.VERBOSE,
)


def tokenize(src):
    toks, pos = [], 0
    while pos < len(src):
        m = TOKEN_RE.match(src, pos)
        if not m:
            raise SyntaxError(f"bad character {src[pos]!r} at {pos}")
        pos = m.end()
        kind = m.lastgroup
        if kind in ("ws", "comment"):
            continue
        toks.append((kind, m.group()))
    return toks


def split_statements(toks):
    stmts, cur, depth = [], [], 0
    for kind, text in toks:
        if kind == "nl":
            if depth == 0:
                if cur:
                    stmts.append(cur)
                cur = []
            continue
        if text in "([":
            depth += 1
        elif text in ")]":
            depth -= 1
        cur.append((kind, text))
    if cur:
        stmts.append(cur)
    return stmts


class Parser:
    CMP = ("<", "<=", ">", ">=", "==", "!=")

    def __init__(self, toks):
        self.t, self.i = toks, 0

    def peek(self, k=0):
        j = self.i + k
        return self.t[j][1] if j < len(self.t) else None

    def take(self, expect=None):
        kind, text = self.t[self.i]
        if expect is not None and text != expect:
            raise SyntaxError(f"expected {expect!r}, got {text!r}")
        self.i += 1
        return kind, text

    def done(self):
        if self.i != len(self.t):
            raise SyntaxError(f"trailing tokens {self.t[self.i:]}")

    def expr(self):  # comparisons: loosest
        node = self.add()
        while self.peek() in self.CMP:
            op = self.take()[1]
            node = ("cmp", op, node, self.add())
        return node

    def add(self):
        node = self.mul()
        while self.peek() in ("+", "-"):
            op = self.take()[1]
            node = ("bin", op, node, self.mul())
        return node

    def mul(self):
        node = self.unary()
        while self.peek() in ("*", "/", "@"):
            op = self.take()[1]
            node = ("bin", op, node, self.unary())
        return node

    def unary(self):
        if self.peek() == "-":
            self.take()
            return ("neg", self.unary())
        return self.power()

    def power(self):  # ^ binds tighter than unary minus, right-associative
        base = self.postfix()
        if self.peek() == "^":
            self.take()
            return ("bin", "^", base, self.unary())
        return base

    def postfix(self):
        node = self.primary()
        while self.peek() == "[":
            self.take("[")
            items = [self.index_item()]
            while self.peek() == ",":
                self.take(",")
                items.append(self.index_item())
            self.take("]")
            node = ("index", node, items)
        return node

    def int_lit(self):
        sign = 1
        if self.peek() == "-":
            self.take()
            sign = -1
        kind, text = self.take()
        if kind != "num" or not text.isdigit():
            raise SyntaxError(f"index must be an integer literal, got {text!r}")
        return sign * int(text)

    def index_item(self):
        start = stop = None
        if self.peek() != ":":
            start = self.int_lit()
            if self.peek() != ":":
                return ("at", start)
        self.take(":")
        if self.peek() not in (",", "]"):
            stop = self.int_lit()
        return ("slice", start, stop)

    def primary(self):
        kind, text = self.take()
        if kind == "num":
            return ("num", float(text))
        if kind == "ident":
            if self.peek() == "(":
                self.take("(")
                args = []
                if self.peek() != ")":
                    args.append(self.expr())
                    while self.peek() == ",":
                        self.take(",")
                        args.append(self.expr())
                self.take(")")
                return ("call", text, args)
            return ("name", text)
        if text == "(":
            node = self.expr()
            self.take(")")
            return node
        if text == "[":
            elems = [self.expr()]
            while self.peek() == ",":
                self.take(",")
                elems.append(self.expr())
            self.take("]")
            return ("array", elems)
        raise SyntaxError(f"unexpected {text!r}")


def parse_expr(src):
    stmts = split_statements(tokenize(src))
    assert len(stmts) == 1, src
    p = Parser(stmts[0])
    node = p.expr()
    p.done()
    return node


def parse_program(src):
    out = []
    for st in split_statements(tokenize(src)):
        if len(st) > 2 and st[0][0] == "ident" and st[1][1] == "=":
            p = Parser(st[2:])
            node = p.expr()
            p.done()
            out.append((st[0][1], node))
        else:
            p = Parser(st)
            node = p.expr()
            p.done()
            out.append((None, node))
    assert out and out[-1][0] is None, "the last line must be a bare expression"
    assert all(name is not None for name, _ in out[:-1])
    return out


class Margins:
    """Distance of kink-like arguments from their kinks (only on concrete values)."""

    def __init__(self):
        self.items = []

    def add(self, what, value):
        try:
            v = float(jnp.min(value))
        except jax.errors.ConcretizationTypeError:
            return  # under tracing: the concrete pass records it
        self.items.append((what, v))


def top2_gap(x, axis):
    if axis is None:
        x = jnp.reshape(x, (-1,))
        axis = 0
    s = jnp.sort(x, axis=axis)
    return jnp.take(s, -1, axis=axis) - jnp.take(s, -2, axis=axis)


class Interp:
    def __init__(self, dt, margins=None):
        self.dt = dt
        self.m = margins or Margins()

    def num(self, v):
        return v  # Python float: weakly typed, takes the tensor's dtype

    def ev(self, node, env):
        kind = node[0]
        if kind == "num":
            return node[1]
        if kind == "name":
            return env(node[1])
        if kind == "neg":
            return -self.ev(node[1], env)
        if kind == "array":
            vals = [self.ev(e, env) for e in node[1]]
            return jnp.stack([jnp.asarray(v, dtype=self.dt) for v in vals])
        if kind == "cmp":
            _, op, l, r = node
            a, b = self.ev(l, env), self.ev(r, env)
            if op in ("<", "<=", ">", ">="):
                self.m.add(f"comparison {op}", jnp.abs(jnp.asarray(a) - jnp.asarray(b)))
            res = {
                "<": jnp.less, "<=": jnp.less_equal, ">": jnp.greater,
                ">=": jnp.greater_equal, "==": jnp.equal, "!=": jnp.not_equal,
            }[op](a, b)
            return res.astype(self.dt)
        if kind == "bin":
            _, op, l, r = node
            a, b = self.ev(l, env), self.ev(r, env)
            if op == "+":
                return a + b
            if op == "-":
                return a - b
            if op == "*":
                return a * b
            if op == "/":
                return a / b
            if op == "@":
                return jnp.matmul(a, b)
            if op == "^":
                return self.pow(a, b)
        if kind == "index":
            _, base, items = node
            x = self.ev(base, env)
            key = tuple(it[1] if it[0] == "at" else slice(it[1], it[2]) for it in items)
            return x[key]
        if kind == "call":
            _, fname, args = node
            vals = [self.ev(a, env) for a in args]
            return self.call(fname, vals)
        raise ValueError(node)

    def pow(self, a, b):
        b_const = isinstance(b, float)
        if not (b_const and float(b).is_integer()):
            self.m.add("pow base > 0 (non-integer or tensor exponent)", a)
        return jnp.power(a, b)

    def call(self, f, a):
        m, dt = self.m, self.dt
        ints = lambda xs: [int(round(float(v))) for v in xs]  # noqa: E731
        axis = lambda: None if len(a) < 2 else int(round(float(a[1])))  # noqa: E731
        simple = {
            "exp": jnp.exp, "log1p": jnp.log1p, "sin": jnp.sin, "cos": jnp.cos,
            "tanh": jnp.tanh, "sigmoid": sigmoid, "softplus": softplus, "gelu": gelu,
            "silu": silu, "erf": jerf, "sqr": sqr, "detach": detach, "transpose": transpose,
        }
        if f in simple:
            return simple[f](*a)
        if f == "log":
            m.add("log argument > 0", a[0])
            return jnp.log(a[0])
        if f == "sqrt":
            m.add("sqrt argument > 0", a[0])
            return jnp.sqrt(a[0])
        if f == "abs":
            m.add("abs |x|", jnp.abs(a[0]))
            return jnp.abs(a[0])
        if f == "relu":
            m.add("relu |x|", jnp.abs(a[0]))
            return relu(a[0])
        if f == "elu":
            m.add("elu |x|", jnp.abs(a[0]))  # second derivative kink only, but keep clear
            return elu(*a)
        if f == "clamp":
            x, lo, hi = a
            m.add("clamp bounds", jnp.minimum(jnp.abs(x - lo), jnp.abs(x - hi)))
            return clamp(x, lo, hi)
        if f in ("min", "max"):
            m.add(f"{f} tie", jnp.abs(jnp.asarray(a[0]) - jnp.asarray(a[1])))
            return (jnp.minimum if f == "min" else jnp.maximum)(a[0], a[1])
        if f == "pow":
            return self.pow(a[0], a[1])
        if f == "where":
            return jnp.where(a[0] != 0, a[1], a[2])
        if f in ("sum", "mean", "amax", "amin", "logsumexp", "norm"):
            ax = axis()
            x = a[0]
            if f == "amax":
                m.add("amax tie", top2_gap(x, ax))
                return jnp.max(x, axis=ax)
            if f == "amin":
                m.add("amin tie", top2_gap(-x, ax))
                return jnp.min(x, axis=ax)
            if f == "norm":
                m.add("norm > 0", norm(x, ax))
            return {"sum": jnp.sum, "mean": jnp.mean, "logsumexp": logsumexp, "norm": norm}[f](
                x, axis=ax
            )
        if f in ("softmax", "log_softmax"):
            ax = -1 if len(a) < 2 else axis()
            return (softmax if f == "softmax" else log_softmax)(a[0], ax)
        if f == "reshape":
            return jnp.reshape(a[0], ints(a[1:]))
        # constructors (deterministic ones only)
        if f == "zeros":
            return jnp.zeros(ints(a), dt)
        if f == "ones":
            return jnp.ones(ints(a), dt)
        if f == "full":
            return jnp.full(ints(a[1:]), a[0], dt)
        if f == "eye":
            return jnp.eye(ints(a)[0], dtype=dt)
        if f == "linspace":
            return jnp.linspace(float(a[0]), float(a[1]), ints(a[2:])[0], dtype=dt)
        if f == "arange":
            if len(a) == 1:
                return jnp.arange(ints(a)[0], dtype=dt)
            return jnp.arange(float(a[0]), float(a[1]), float(a[2]), dtype=dt)
        raise NameError(f"unknown function {f}")


def load_toml(path):
    doc = tomllib.loads(path.read_text())
    assert doc.get("dtype") == "f64", path
    assert isinstance(doc.get("name"), str) and doc.get("about"), path
    known = {"name", "about", "seed", "dtype", "loss", "data", "consts", "params"}
    assert set(doc) <= known, set(doc) - known
    return doc


def interp_inputs(doc, margins):
    """Evaluate [consts], [data] (any order, by dependency) and [params] in float64."""
    it = Interp(jnp.float64, margins)
    consts = {k: float(v) for k, v in doc.get("consts", {}).items()}
    data_src = {k: parse_expr(v) for k, v in doc.get("data", {}).items()}
    params_src = {}
    for k, v in doc["params"].items():
        params_src[k] = ("num", float(v)) if isinstance(v, (int, float)) else parse_expr(v)
    data, params, busy = {}, {}, set()

    def env(name):
        if name in consts:
            return consts[name]
        for src, store in ((data_src, data), (params_src, params)):
            if name in src:
                if name not in store:
                    assert name not in busy, f"cycle through {name}"
                    busy.add(name)
                    store[name] = jnp.asarray(it.ev(src[name], env), jnp.float64)
                    busy.discard(name)
                return store[name]
        raise NameError(name)

    for k in data_src:
        env(k)
    for k in params_src:
        env(k)
    as_np = lambda d: {k: np.asarray(v) for k, v in d.items()}  # noqa: E731
    return as_np(data), consts, as_np(params)


def interp_loss(doc, margins=None):
    prog = parse_program(doc["loss"])

    def loss(P, D, C, dt):
        it = Interp(dt, margins)
        local = {}

        def env(name):
            for scope in (local, P, D, C):
                if name in scope:
                    return scope[name]
            raise NameError(name)

        for target, node in prog:
            val = it.ev(node, env)
            if target is None:
                return jnp.asarray(val, dt)
            local[target] = val

    return loss


def close(a, b, rtol, atol=0.0):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=atol)


def check_case(name, data, consts, params, loss, doc):
    # 1. interpreter agrees with the hand-written twin
    margins = Margins()
    idata, iconsts, iparams = interp_inputs(doc, margins)
    assert iconsts == {k: float(v) for k, v in consts.items()}, (name, iconsts, consts)
    assert set(idata) == set(data), (name, set(idata) ^ set(data))
    assert set(iparams) == set(params), (name, set(iparams) ^ set(params))
    for k in data:
        assert close(idata[k], data[k], 1e-13, 1e-15), (name, "data", k)
    for k in params:
        assert close(iparams[k], params[k], 1e-13, 1e-15), (name, "param", k)
    iloss = interp_loss(doc, margins)
    for tag, dt in DTYPES.items():
        v1, g1 = run(loss, data, consts, params, dt)
        v2, g2 = run(iloss, idata, iconsts, iparams, dt)
        tol = 1e-12 if tag == "f64" else 1e-5
        assert close(v1, v2, tol, tol), (name, tag, "loss", float(v1), float(v2))
        for k in params:
            scale = float(np.max(np.abs(np.asarray(g1[k], np.float64)))) + 1e-30
            assert close(g1[k], g2[k], tol, tol * scale), (name, tag, "grad", k)
    # concrete pass (no tracing) so every kink margin is recorded
    D = {k: jnp.asarray(v) for k, v in idata.items()}
    P = {k: jnp.asarray(v) for k, v in iparams.items()}
    iloss(P, D, iconsts, jnp.float64)
    # 2. margins from kinks and domain edges
    worst = min(margins.items, key=lambda t: t[1]) if margins.items else ("none", math.inf)
    assert worst[1] >= MIN_MARGIN, (name, worst)

    # 3. central finite differences in float64
    v, g = run(loss, data, consts, params, jnp.float64)
    D = {k: jnp.asarray(x) for k, x in data.items()}
    C = {k: float(x) for k, x in consts.items()}
    f = jax.jit(lambda P_: loss(P_, D, C, jnp.float64))
    if "detach" in doc["loss"]:
        # hold every detach(...) at its value at the initial params (see detach above)
        _DETACH.update(mode="record", tape=[], i=0)
        loss({k: jnp.asarray(x) for k, x in params.items()}, D, C, jnp.float64)
        _DETACH["mode"] = "replay"

        def f(P_):
            _DETACH["i"] = 0
            return loss(P_, D, C, jnp.float64)

    h, fd_err = 1e-6, 0.0
    for k, x in params.items():
        gk = np.asarray(g[k]).reshape(-1)
        scale = max(1.0, float(np.max(np.abs(gk))))
        for i in range(x.size):
            xp, xm = x.copy().reshape(-1), x.copy().reshape(-1)
            xp[i] += h
            xm[i] -= h
            Pp = {**params, k: xp.reshape(x.shape)}
            Pm = {**params, k: xm.reshape(x.shape)}
            fd = (float(f(Pp)) - float(f(Pm))) / (2 * h)
            fd_err = max(fd_err, abs(fd - gk[i]) / scale)
    _DETACH.update(mode=None, tape=[], i=0)
    assert fd_err < 1e-6, (name, "finite differences", fd_err)

    # 4. float32 agrees with float64 to float32 accuracy
    v32, g32 = run(loss, data, consts, params, jnp.float32)
    rel32 = abs(float(v32) - float(v)) / max(1.0, abs(float(v)))
    for k in params:
        a = np.asarray(g[k], np.float64)
        b = np.asarray(g32[k], np.float64)
        rel32 = max(rel32, float(np.max(np.abs(a - b))) / max(1.0, float(np.max(np.abs(a)))))
    assert rel32 < 1e-4, (name, "f32 vs f64", rel32)
    return worst, fd_err, rel32


REQUIRED = {
    # elementwise functions and binary functions
    *"exp log log1p sqrt abs sqr sin cos tanh sigmoid softplus relu gelu elu elu/2 silu erf".split(),
    *"clamp min max pow where".split(),
    # reductions without axis, with a non-negative axis and with a negative axis
    *(f"{r}{suffix}" for r in "sum mean amax amin logsumexp norm".split() for suffix in ("", "/+", "/-")),
    "softmax", "softmax/+", "softmax/-", "log_softmax", "log_softmax/+", "log_softmax/-",
    "reshape/-1", "transpose", "detach",
    # operators
    *"< <= > >= == != + - * / @ ^ neg".split(),
    # indexing forms
    "x[i]", "x[-i]", "x[:, i]", "x[a:b]",
}


def coverage(docs):
    seen = set()

    def walk(node):
        kind = node[0]
        if kind in ("cmp", "bin"):
            seen.add(node[1])
        elif kind == "neg":
            seen.add("neg")
        elif kind == "index":
            for it in node[2]:
                if it[0] == "at":
                    seen.add("x[-i]" if it[1] < 0 else "x[i]")
                elif it[1] is None and it[2] is None:
                    seen.add("x[:, i]")
                else:
                    seen.add("x[a:b]")
        elif kind == "call":
            f, args = node[1], node[2]
            seen.add(f)
            if f == "elu" and len(args) == 2:
                seen.add("elu/2")
            if len(args) == 2 and f not in ("elu", "min", "max", "pow"):
                ax = args[1]
                neg = ax[0] == "neg"
                seen.add(f"{f}/{'-' if neg else '+'}")
            if f == "reshape" and any(a == ("neg", ("num", 1.0)) for a in args[1:]):
                seen.add("reshape/-1")
        for child in node[1:]:
            if isinstance(child, tuple):
                walk(child)
            elif isinstance(child, list):
                for c in child:
                    if isinstance(c, tuple):
                        walk(c)

    for doc in docs:
        for _, node in parse_program(doc["loss"]):
            walk(node)
    missing = REQUIRED - seen
    assert not missing, f"the reference files do not exercise {sorted(missing)}"


def main():
    tomls = sorted(p.stem for p in HERE.glob("*.toml"))
    coverage([load_toml(HERE / f"{t}.toml") for t in tomls])
    assert tomls == sorted(CASES), ("TOML files and cases differ", set(tomls) ^ set(CASES))
    out = {"source": f"jax {jax.__version__}", "cases": {}}
    for name in sorted(CASES):
        data, consts, params, loss = CASES[name]()
        doc = load_toml(HERE / f"{name}.toml")
        worst, fd_err, rel32 = check_case(name, data, consts, params, loss, doc)
        case = {}
        for tag, dt in DTYPES.items():
            case[tag] = to_json(*run(loss, data, consts, params, dt))
        out["cases"][name] = case
        print(
            f"{name:20s} loss(f64)={case['f64']['loss']:+.10g}  "
            f"min margin={worst[1]:.3g} ({worst[0]})  fd err={fd_err:.1e}  f32 rel={rel32:.1e}"
        )
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT} ({len(out['cases'])} cases, jax {jax.__version__})")


if __name__ == "__main__":
    sys.exit(main())
