"""An independent float64 NumPy reference of the official SA3 adapter math.

Written straight from ../shared/reference/adapters.md, sharing no code with sa3ckpt, so the
MLX implementation is checked against the formulas rather than against itself.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def ref_adapted(
    w0: np.ndarray, kind: str, p: dict[str, np.ndarray], c: float, s: float
) -> np.ndarray:
    """f(W0; s) for one adapter of `kind` with params p (float64), 2-D weights."""
    w0 = np.asarray(w0, dtype=np.float64)
    decomposed = kind.startswith(("dora", "bora"))
    if decomposed and s == 0:
        return w0.copy()
    delta = p["U"] @ p["M_xs"] @ p["V"].T if kind.endswith("xs") else p["lora_B"] @ p["lora_A"]
    v = w0 + c * s * delta
    if kind in ("lora", "lora-xs"):
        return v
    if kind in ("dora-rows", "dora-rows-xs"):
        return p["magnitude"][:, None] * v / (np.linalg.norm(v, axis=1, keepdims=True) + EPS)
    if kind in ("dora-cols", "dora-cols-xs"):
        return p["magnitude"][None, :] * v / (np.linalg.norm(v, axis=0, keepdims=True) + EPS)
    if kind in ("bora", "bora-xs"):
        r = p["magnitude_r"][:, None] * v / (np.linalg.norm(v, axis=1, keepdims=True) + EPS)
        return p["magnitude_c"][None, :] * r / (np.linalg.norm(r, axis=0, keepdims=True) + EPS)
    raise AssertionError(kind)


def ref_blend_adapted(
    w_in: np.ndarray, kind: str, p: dict[str, np.ndarray], c: float, s: float
) -> np.ndarray:
    """f(W_in; s) under blend: every magnitude m is replaced by n + s (m − n) first.

    n is the plain L2 norm of the incoming weight W_in: its row norms for dora-rows(-xs) and
    bora's magnitude_r, its column norms for dora-cols(-xs) and bora's magnitude_c. At s == 1
    the stored magnitudes are used as they are.
    """
    w_in = np.asarray(w_in, dtype=np.float64)
    rows = np.linalg.norm(w_in, axis=1)
    cols = np.linalg.norm(w_in, axis=0)
    blended = dict(p)
    if s != 1:
        toward = {"magnitude_r": rows, "magnitude_c": cols}
        if kind.startswith("dora"):
            toward["magnitude"] = cols if "cols" in kind else rows
        for name, n in toward.items():
            if name in p:
                blended[name] = n + s * (np.asarray(p[name], np.float64) - n)
    return ref_adapted(w_in, kind, blended, c, s)


def ref_blend(w0: np.ndarray, stack: list[tuple[str, dict, float, float]]) -> np.ndarray:
    """Chain under blend: W_i = f_i(W_{i-1}; s_i), magnitudes blended toward W_{i-1}'s norms."""
    w = np.asarray(w0, dtype=np.float64)
    for kind, p, c, s in stack:
        w = ref_blend_adapted(w, kind, p, c, s)
    return w


def ref_runtime(w0: np.ndarray, stack: list[tuple[str, dict, float, float]]) -> np.ndarray:
    """Chain: W_i = f_i(W_{i-1}; s_i). stack items: (kind, params, c, s)."""
    w = np.asarray(w0, dtype=np.float64)
    for kind, p, c, s in stack:
        w = ref_adapted(w, kind, p, c, s)
    return w


def ref_delta(w0: np.ndarray, stack: list[tuple[str, dict, float, float]]) -> np.ndarray:
    """W0 + Σ s_i (f_i(W0; 1) − W0)."""
    base = np.asarray(w0, dtype=np.float64)
    out = base.copy()
    for kind, p, c, s in stack:
        out += s * (ref_adapted(base, kind, p, c, 1.0) - base)
    return out


# Each named semantics' reference, for tests that run all of them.
REFERENCES = {"runtime": ref_runtime, "delta": ref_delta, "blend": ref_blend}


def ref_svd_bases(w: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """XS bases in float64 with the SA3 sign convention."""
    u, _, vh = np.linalg.svd(np.asarray(w, dtype=np.float64), full_matrices=False)
    idx = np.argmax(np.abs(u), axis=0)
    signs = np.sign(u[idx, np.arange(u.shape[1])])
    signs[signs == 0] = 1.0
    u = u * signs
    vh = signs[:, None] * vh
    return u[:, :rank], vh[:rank].T
