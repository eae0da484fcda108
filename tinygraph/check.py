"""Finite-difference checks of reverse-mode gradients."""

import numpy as np

from .errors import FeedError, GraphError


class GradientCheck(float):
    """The maximum relative error (a float), with ``.node`` (where it occurred) and
    ``.errors`` ({node name: relative error}) attached."""

    def __new__(cls, value, node, errors):
        obj = super().__new__(cls, value)
        obj.node = node
        obj.errors = errors
        return obj

    def __repr__(self):
        return f"GradientCheck(max_rel_error={float(self):.3g}, node={self.node!r})"


def relative_error(analytic, numeric, floor=1e-8):
    """max |a - n| / max(max|a|, max|n|, floor): scale-free and safe near zero."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    if a.size == 0:
        return 0.0
    scale = max(np.max(np.abs(a)), np.max(np.abs(n)), floor)
    return float(np.max(np.abs(a - n)) / scale)


def central_differences(loss_fn, arr, eps, max_entries=None, rng=None):
    """(indices, dloss/d arr.flat[indices]) by central differences: each entry of ``arr`` is
    perturbed in place (so any storage sharing it moves too) and restored.  ``max_entries``
    samples that many entries (with ``rng``) instead of all."""
    idx = np.arange(arr.size)
    if max_entries is not None and arr.size > max_entries:
        idx = np.sort(rng.choice(arr.size, size=max_entries, replace=False))
    numeric = np.empty(idx.size)
    for k, i in enumerate(idx):
        # an index into arr itself (not into arr.reshape(-1), which copies a non-contiguous array)
        pos = np.unravel_index(i, arr.shape)
        old = arr[pos]
        arr[pos] = old + eps
        up = loss_fn()
        arr[pos] = old - eps
        down = loss_fn()
        arr[pos] = old
        numeric[k] = (up - down) / (2 * eps)
    return idx, numeric


def noise_floor(loss, eps, tol=1e-6):
    """The gradient scale below which central differences cannot be judged to ``tol``:
    their rounding noise is about 2.2e-16 |loss| / eps."""
    return max(1e-8, 2.2e-16 * abs(float(loss)) / eps / tol)


def check_gradients(graph, loss, feeds=None, wrt=None, inputs=False, eps=1e-6, max_entries=None, seed=0):
    """Compare reverse-mode gradients of scalar ``loss`` with central differences.

    Parameters
    ----------
    wrt : list of param/input nodes, optional
        What to check; default every parameter (plus every float input with ``inputs=True``).
    eps : float
        Step of the central difference (computed in float64).
    max_entries : int, optional
        Check at most this many randomly chosen entries per node (seeded), for big nodes.

    Returns
    -------
    GradientCheck
        A float (the maximum relative error) with ``.node`` and ``.errors``.
    """
    from .graph import Graph
    if not isinstance(graph, Graph):
        raise GraphError(f"check_gradients: the first argument must be a tinygraph Graph, got {type(graph).__name__}")
    if feeds is not None and not isinstance(feeds, dict):
        raise FeedError(f"check_gradients: feeds must be a dict of input name -> array, got {type(feeds).__name__}")
    if not (isinstance(eps, (int, float)) and np.isfinite(eps) and eps > 0):
        raise GraphError(f"check_gradients: eps must be a positive number, got {eps!r}")
    feeds = dict(feeds or {})
    loss = graph.own(loss, "check_gradients loss")
    acts = graph.forward(feeds, outputs=[loss])
    grads = acts.backward(loss)
    if wrt is None:
        wrt = [p for p in graph.params if p in acts]
        if inputs:
            wrt += [n for n in graph.inputs if np.issubdtype(n.dtype, np.floating) and n in acts]
    rng = np.random.default_rng(seed)
    # resolve feeds by name so inputs can be perturbed
    by_name = {}
    for k, v in feeds.items():  # (a float input fed ints gets float64 too: eps would truncate away)
        name = k if isinstance(k, str) else k.name
        declared = graph[name].dtype if name in graph else None
        floating = np.issubdtype(np.asarray(v).dtype, np.floating) or (
            declared is not None and np.issubdtype(declared, np.floating))
        by_name[name] = np.array(v, dtype=np.float64, copy=True) if floating else v

    def loss_value():
        return float(np.sum(graph.forward(by_name, outputs=[loss])[loss]))

    # finite differences carry rounding noise of about 1e-16 |loss| / eps, so an exactly
    # zero gradient must be judged against that scale, not against zero
    floor = noise_floor(loss_value(), eps)
    errors = {}
    holders = {}  # id(array) -> the params holding it (tied copies of an unrolled net share one)
    for p in graph.params:
        holders.setdefault(id(p.value), []).append(p)
    checked = set()
    for node in wrt:
        node = graph.own(node, "check_gradients wrt")
        if node.op == "param":
            arr = node.value
            if id(arr) in checked:
                continue  # (checked once per array, as the sum over the params holding it)
            checked.add(id(arr))
            # moving the array moves every param holding it: compare with their summed gradients
            analytic = sum(np.asarray(grads[p], dtype=np.float64) for p in holders[id(arr)]).reshape(-1)
            flat_idx, numeric = central_differences(loss_value, arr, eps, max_entries, rng)
            errors[node.name] = relative_error(analytic[flat_idx], numeric, floor)
            continue
        elif node.op == "input":
            if node.name not in by_name:
                raise GraphError(f"check_gradients: no feed for input '{node.name}'")
            arr = by_name[node.name]
        else:
            raise GraphError(f"check_gradients: '{node.name}' is a {node.op} node; only params and inputs can be perturbed")
        analytic = np.asarray(grads[node], dtype=np.float64).reshape(-1)
        flat_idx, numeric = central_differences(loss_value, arr, eps, max_entries, rng)
        errors[node.name] = relative_error(analytic[flat_idx], numeric, floor)
    if not errors:
        return GradientCheck(0.0, None, errors)
    worst = max(errors, key=errors.get)
    return GradientCheck(errors[worst], worst, errors)
