"""Saving and loading recurrent nets: a JSON spec plus the weight arrays, in one .npz file.

The spec (``net.spec()``) is plain JSON: groups and connections in order.  A saved
net is an ordinary numpy archive holding that JSON as a uint8 byte array under
``__spec__`` and every weight array, so numpy reads it without pickle and loading
never runs code.  Everything read is validated (types, names, sizes, shapes, finite
values) before anything large is allocated; any problem is a LoadError naming the
file and what is wrong.
"""

import json
import math
import os
import re
import zipfile
from collections.abc import Mapping

import numpy as np

from tinygraph.errors import GraphError
from tinygraph.io import PersistError, atomic_write, open_npz, read_member, write_npz

from .net import ACTIVATIONS, MAX_UNITS, ROLES, NetError, RecurrentNet

__all__ = ["LoadError", "net_spec", "net_from_spec", "save_net", "load", "load_spec_file", "load_any"]

FORMAT = "tinygraph-rnn"
VERSION = 1
# Sanity bounds: a damaged or hostile file must fail fast instead of exhausting memory or time.
MAX_WEIGHT_ENTRIES = 50_000_000  # weights, biases and initial states together
MAX_GROUPS = 256  # connect() re-sorts the groups per delay-0 connection: keep the worst case ~3 s
MAX_CONNECTIONS = 1_024
MAX_DELAY = 1_000_000
MAX_SPEC_BYTES = 64 * 2 ** 20
MAX_NAME_CHARS = 1_000

SPEC_KEY = "__spec__"
_TOP_REQUIRED = ("format", "version", "groups")
# "arrays": where a saved file keeps each weight; "rng": the state of the net's random generator
_TOP_OPTIONAL = ("name", "seed", "connections", "arrays", "rng")
_GROUP_REQUIRED = ("name", "size")
_GROUP_OPTIONAL = ("activation", "role", "bias", "initial")
_CONN_REQUIRED = ("src", "dst")
_CONN_OPTIONAL = ("name", "delay")
_SAFE_KEY = re.compile(r"[A-Za-z0-9_:>\-\[\]#.@]{1,200}")


class LoadError(NetError, PersistError):
    """A net spec or saved file that cannot be turned into a net; the message says what and where."""


# ------------------------------------------------------------------ small checks

def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_num(x):
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _kind(x):
    return "null" if x is None else type(x).__name__


def _check_keys(obj, where, required, optional):
    if not isinstance(obj, Mapping):
        raise LoadError(f"{where} must be a JSON object (dict), got {_kind(obj)}")
    unknown = [k for k in obj if k not in required and k not in optional]
    if unknown:
        raise LoadError(f"{where} has unknown key(s) {unknown[:5]}; allowed keys: {list(required + optional)}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise LoadError(f"{where} lacks the required key(s) {missing}")


def _check_name(value, where, what):
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS:
        raise LoadError(f"{where}: {what} must be a non-empty string of at most {MAX_NAME_CHARS} characters, "
                        f"got {_kind(value)} {_short(value)}")
    return value


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------ spec <-> net

def net_spec(net):
    """The net's structure as JSON-ready data, in the order groups and connections were added.

    ``initial`` is null (the default), a number, a list of numbers, or "learned";
    the arrays (weights, biases, learned initial states) are not included.
    """
    groups = []
    for g in net.groups.values():
        if g.learned:
            initial = "learned"
        elif g.initial is None:
            initial = None
        elif isinstance(g.initial, np.ndarray):
            initial = [float(v) for v in g.initial]
        else:
            initial = float(g.initial)
        groups.append({"name": g.name, "size": int(g.size), "activation": g.activation, "role": g.role,
                       "bias": bool(g.bias), "initial": initial})
    connections = []
    for c in net.connections.values():
        if not isinstance(c.name, str):
            raise NetError(f"net '{net.name}': connection {c.src}->{c.dst} is named {c.name!r}; a net can only be "
                           f"written as a spec when every connection name is a string")
        connections.append({"name": c.name, "src": c.src, "dst": c.dst, "delay": int(c.delay)})
    seed = int(net.seed) if _is_int(net.seed) and net.seed >= 0 else None
    return {"format": FORMAT, "version": VERSION, "name": str(net.name), "seed": seed,
            "groups": groups, "connections": connections}


def rng_state(net):
    """The net's random generator state as JSON-ready data (None unless it is numpy's PCG64):
    saved with the net, so that weights drawn after loading continue the same stream."""
    rng = getattr(net, "_rng", None)
    state = getattr(getattr(rng, "bit_generator", None), "state", None)
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        return None
    inner = state["state"]
    return {"bit_generator": "PCG64", "state": {"state": int(inner["state"]), "inc": int(inner["inc"])},
            "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}


def _check_rng(rng):
    """A saved generator state, checked key by key before numpy sees it."""
    where = "the spec's rng"
    _check_keys(rng, where, ("bit_generator", "state", "has_uint32", "uinteger"), ())
    if rng["bit_generator"] != "PCG64":
        raise LoadError(f"{where}: bit_generator must be 'PCG64', got {_short(rng['bit_generator'])}")
    _check_keys(rng["state"], where + " state", ("state", "inc"), ())
    for key in ("state", "inc"):
        v = rng["state"][key]
        if not (_is_int(v) and 0 <= v < 2 ** 128):
            raise LoadError(f"{where}: state.{key} must be an integer in 0..2**128-1, got {_kind(v)} {_short(v)}")
    if not (_is_int(rng["has_uint32"]) and rng["has_uint32"] in (0, 1)):
        raise LoadError(f"{where}: has_uint32 must be 0 or 1, got {_short(rng['has_uint32'])}")
    if not (_is_int(rng["uinteger"]) and 0 <= rng["uinteger"] < 2 ** 32):
        raise LoadError(f"{where}: uinteger must be an integer in 0..2**32-1, got {_short(rng['uinteger'])}")
    return {"bit_generator": "PCG64", "state": dict(rng["state"]), "has_uint32": rng["has_uint32"],
            "uinteger": rng["uinteger"]}


class _Plan:
    """A validated spec: normalized group and connection arguments and every weight's expected shape."""

    def __init__(self, name, seed, groups, connections, shapes, rng=None):
        self.name, self.seed, self.groups, self.connections, self.shapes = name, seed, groups, connections, shapes
        self.rng = rng


def _check_spec(spec):
    """Validate a spec completely (types, names, bounds) without allocating anything; return a _Plan."""
    # format and version first: a file from another program or a newer tinygraph is named as such,
    # not reported as a list of keys it happens to lack
    if isinstance(spec, dict) and "format" in spec:
        fmt = spec["format"]
        if not (isinstance(fmt, str) and fmt == FORMAT):
            raise LoadError(f"the spec's format is {_short(fmt)}, expected '{FORMAT}': this is not a tinygraph net")
    if isinstance(spec, dict) and "version" in spec:
        version = spec["version"]
        if not _is_int(version):
            raise LoadError(f"the spec's version must be an integer, got {_kind(version)} {_short(version)}")
        if version != VERSION:
            raise LoadError(f"the spec has version {version}; this tinygraph reads version {VERSION} "
                            f"(a newer tinygraph wrote it: upgrade tinygraph)")
    _check_keys(spec, "the spec", _TOP_REQUIRED, _TOP_OPTIONAL)
    name = spec.get("name", "net")
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise LoadError(f"the spec's name must be a string of at most {MAX_NAME_CHARS} characters, "
                        f"got {_kind(name)} {_short(name)}")
    seed = spec.get("seed", 0)
    if seed is not None and not (_is_int(seed) and 0 <= seed < 2 ** 128):
        raise LoadError(f"the spec's seed must be null or an integer in 0..2**128-1, got {_kind(seed)} {_short(seed)}")

    groups_in = spec["groups"]
    if not isinstance(groups_in, (list, tuple)):
        raise LoadError(f"the spec's groups must be a list, got {_kind(groups_in)}")
    if len(groups_in) > MAX_GROUPS:
        raise LoadError(f"the spec declares {len(groups_in)} groups, more than the limit of {MAX_GROUPS}")
    groups, sizes, shapes = [], {}, {}
    entries = 0
    for i, g in enumerate(groups_in):
        where = f"groups[{i}]"
        _check_keys(g, where, _GROUP_REQUIRED, _GROUP_OPTIONAL)
        gname = _check_name(g["name"], where, "name")
        where = f"groups[{i}] ('{gname}')"
        if gname in sizes:
            raise LoadError(f"{where}: a group named '{gname}' appears twice")
        size = g["size"]
        if not _is_int(size) or not 1 <= size <= MAX_UNITS:
            raise LoadError(f"{where}: size must be an integer in 1..{MAX_UNITS}, got {_kind(size)} {_short(size)}")
        size = int(size)
        role = g.get("role", "hidden")
        if not (isinstance(role, str) and role in ROLES):
            raise LoadError(f"{where}: role must be one of {list(ROLES)}, got {_short(role)}")
        activation = g.get("activation")
        if activation is not None and not (isinstance(activation, str) and activation in ACTIVATIONS):
            raise LoadError(f"{where}: activation must be null or one of {list(ACTIVATIONS)}, got {_short(activation)}")
        bias = g.get("bias")
        if bias is not None and not isinstance(bias, (bool, np.bool_)):
            raise LoadError(f"{where}: bias must be true, false or null, got {_kind(bias)} {_short(bias)}")
        bias = (role != "input") if bias is None else bool(bias)
        initial = g.get("initial")
        if isinstance(initial, np.ndarray) and initial.ndim == 0:
            initial = initial.item()
        if isinstance(initial, str):
            if initial not in ("learned", "zero"):
                raise LoadError(f"{where}: initial must be null, a number, a list of {size} numbers, \"zero\" or "
                                f"\"learned\", got {_short(initial)}")
        elif _is_num(initial):
            if not math.isfinite(float(initial)):
                raise LoadError(f"{where}: initial must be finite, got {initial!r}")
            initial = float(initial)
        elif isinstance(initial, (list, tuple, np.ndarray)):
            if len(initial) != size:
                raise LoadError(f"{where}: an initial state list must hold size={size} numbers, got {len(initial)}")
            if not all(_is_num(v) and math.isfinite(float(v)) for v in initial):
                raise LoadError(f"{where}: an initial state list must hold finite numbers only")
            initial = np.array([float(v) for v in initial], dtype=np.float64)
            entries += size
        elif initial is not None:
            raise LoadError(f"{where}: initial must be null, a number, a list of {size} numbers, \"zero\" or "
                            f"\"learned\", got {_kind(initial)} {_short(initial)}")
        if isinstance(initial, str) and initial == "learned":
            shapes[f"init:{gname}"] = (size,)
        if bias:
            shapes[f"bias:{gname}"] = (size,)
        entries += size * (bias + (isinstance(initial, str) and initial == "learned"))
        sizes[gname] = size
        groups.append((gname, size, activation, role, bias, initial))

    conns_in = spec.get("connections", [])
    if not isinstance(conns_in, (list, tuple)):
        raise LoadError(f"the spec's connections must be a list, got {_kind(conns_in)}")
    if len(conns_in) > MAX_CONNECTIONS:
        raise LoadError(f"the spec declares {len(conns_in)} connections, more than the limit of {MAX_CONNECTIONS}")
    connections, conn_shapes = [], {}
    for i, c in enumerate(conns_in):
        where = f"connections[{i}]"
        _check_keys(c, where, _CONN_REQUIRED, _CONN_OPTIONAL)
        src = _check_name(c["src"], where, "src")
        dst = _check_name(c["dst"], where, "dst")
        where = f"connections[{i}] ({src}->{dst})"
        for end, gname in (("src", src), ("dst", dst)):
            if gname not in sizes:
                raise LoadError(f"{where}: {end} '{gname}' is not a group of the spec (groups: {list(sizes)[:20]})")
        delay = c.get("delay")
        if delay is None:
            delay = 1 if src == dst else 0
        if not _is_int(delay) or not 0 <= delay <= MAX_DELAY:
            raise LoadError(f"{where}: delay must be null or an integer in 0..{MAX_DELAY}, "
                            f"got {_kind(delay)} {_short(delay)}")
        cname = c.get("name")
        if cname is None:  # the name RecurrentNet.connect would give
            cname = f"{src}->{dst}"
            if cname in conn_shapes:
                cname = f"{src}->{dst}[d{delay}]"
        _check_name(cname, where, "name")
        if cname in conn_shapes or cname in shapes:
            raise LoadError(f"{where}: the weight name '{cname}' is used twice; give the connection another name")
        conn_shapes[cname] = (sizes[src], sizes[dst])
        entries += sizes[src] * sizes[dst]
        connections.append((src, dst, int(delay), cname))
    if entries > MAX_WEIGHT_ENTRIES:
        raise LoadError(f"the spec declares {entries:,} weight entries, more than the limit of "
                        f"{MAX_WEIGHT_ENTRIES:,} (a damaged or hostile file?  If the net is real, raise "
                        f"rnn.persist.MAX_WEIGHT_ENTRIES)")
    shapes.update(conn_shapes)
    rng = spec.get("rng")
    return _Plan(name, None if seed is None else int(seed), groups, connections, shapes,
                 None if rng is None else _check_rng(rng))


def _check_weights(weights, shapes):
    """{name: array} checked against the expected names and shapes: float arrays of their own, finite.
    Float dtypes are kept (bitwise round trips); integer arrays become float64."""
    if not isinstance(weights, Mapping):
        raise LoadError(f"weights must be a dict {{name: array}}, got {_kind(weights)}")
    missing = [n for n in shapes if n not in weights]
    if missing:
        raise LoadError(f"no array for weight(s) {missing[:10]} (expected {len(shapes)} arrays: {list(shapes)[:20]})")
    extra = [n for n in weights if n not in shapes]
    if extra:
        raise LoadError(f"array(s) {[_short(n) for n in extra[:10]]} match no weight of the spec "
                        f"(expected: {list(shapes)[:20]})")
    out = {}
    for name, value in weights.items():
        try:
            arr = np.asarray(value)
        except Exception as exc:
            raise LoadError(f"weight '{name}': not an array ({type(exc).__name__}: {exc})") from None
        if arr.dtype.kind in "iub":
            arr = arr.astype(np.float64)
        if arr.dtype.kind != "f":
            raise LoadError(f"weight '{name}': expected a float array, got dtype {arr.dtype}")
        if arr.shape != shapes[name]:
            raise LoadError(f"weight '{name}' has shape {arr.shape}, expected {shapes[name]} "
                            f"(src units x dst units for a connection, units for a bias or initial state)")
        if not np.all(np.isfinite(arr)):
            raise LoadError(f"weight '{name}' holds NaN or infinity")
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        out[name] = np.array(arr, copy=True)
    return out


def _build(plan, weights=None):
    net = RecurrentNet(plan.name, seed=plan.seed)
    for gname, size, activation, role, bias, initial in plan.groups:
        net.add_group(gname, size, activation=activation, role=role, bias=bias, initial=initial)
    for src, dst, delay, cname in plan.connections:
        net.connect(src, dst, delay=delay, weight=None if weights is None else weights[cname], name=cname)
    if weights is not None:
        # the given arrays themselves (dtype kept) become the storage, in the given order
        net.weights.clear()
        net.weights.update(weights)
    if plan.rng is not None:  # after the draws above: the saved net's stream continues from here
        net._rng.bit_generator.state = plan.rng
    return net


def net_from_spec(spec, weights=None):
    """Build a RecurrentNet from a spec (``net.spec()`` data), checking everything first.

    ``weights``: optional {name: array} for every weight, bias and learned initial
    state (exactly the names the spec implies, with their shapes); without it the
    arrays start random from the spec's seed.  Raises LoadError (or NetError for a
    structural problem such as a zero-delay cycle) -- never another exception type.
    """
    plan = _check_spec(spec)
    if weights is not None:
        weights = _check_weights(weights, plan.shapes)
    return _build(plan, weights)


# ------------------------------------------------------------------ files

def _safe_key(name):
    return bool(_SAFE_KEY.fullmatch(name)) and not name.startswith("__") and not name.endswith(".npy")


def save_net(net, path):
    """Write ``net`` to one .npz file (atomically): ``__spec__`` (the JSON spec as uint8 bytes, with an
    "arrays" list mapping each weight name to its archive key) plus every weight array.

    The net is checked as ``load`` would check it, so a saved file always loads.  Returns ``path``.
    """
    spec = net_spec(net)
    try:
        plan = _check_spec(spec)
        weights = _check_weights(net.weights, plan.shapes)
    except LoadError as exc:
        raise NetError(f"cannot save net '{net.name}' to {os.fspath(path)}: {exc}") from None
    arrays, mapping = {}, []
    for i, name in enumerate(net.weights):
        key = name if _safe_key(name) else f"__w{i}"
        mapping.append([name, key])
        arrays[key] = weights[name]
    extra = {"arrays": mapping}
    rng = rng_state(net)
    if rng is not None:
        extra["rng"] = rng
    blob = json.dumps(dict(spec, **extra), allow_nan=False, separators=(",", ":")).encode("utf-8")
    arrays = {SPEC_KEY: np.frombuffer(blob, dtype=np.uint8), **arrays}
    return atomic_write(path, lambda f: write_npz(f, arrays))


def _reject_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the key {k!r} appears twice in one object")
        out[k] = v
    return out


def _parse_json(blob):
    try:
        text = bytes(blob).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LoadError(f"the spec is not UTF-8 text ({exc})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise LoadError(f"the spec is not valid JSON ({type(exc).__name__}: {exc})") from None


def _from_npz(data):
    files = list(data.files)
    if SPEC_KEY not in files:
        raise LoadError(f"the archive has no '{SPEC_KEY}' entry, so it is not a net saved by net.save "
                        f"(arrays found: {files[:10]}; a tg.save_params file loads with tg.load_params)")
    try:
        raw = read_member(data, SPEC_KEY, max_entries=MAX_SPEC_BYTES)
    except ValueError as exc:
        raise LoadError(f"cannot read the spec: {exc}") from None
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise LoadError(f"'{SPEC_KEY}' must be a 1-d uint8 array of JSON text, got dtype {raw.dtype} "
                        f"shape {raw.shape}")
    stored = _parse_json(raw.tobytes())
    if not isinstance(stored, dict):
        raise LoadError(f"the spec must be a JSON object, got {_kind(stored)}")
    plan = _check_spec(stored)
    mapping = stored.get("arrays")
    if mapping is None:
        mapping = [[name, name] for name in plan.shapes]
    if not isinstance(mapping, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in mapping):
        raise LoadError("the spec's 'arrays' must be a list of [weight name, archive key] pairs of strings")
    names = [n for n, _ in mapping]
    keys = [k for _, k in mapping]
    if len(set(names)) != len(names) or len(set(keys)) != len(keys) or SPEC_KEY in keys:
        raise LoadError("the spec's 'arrays' lists a weight name or an archive key twice")
    missing = [n for n in plan.shapes if n not in names]
    if missing:
        raise LoadError(f"no array for weight(s) {missing[:10]} of the spec")
    unknown = [n for n in names if n not in plan.shapes]
    if unknown:
        raise LoadError(f"the file lists array(s) for {unknown[:10]}, which are not weights of the spec")
    absent = [k for k in keys if k not in files]
    if absent:
        raise LoadError(f"the archive lacks the array(s) {absent[:10]} its spec lists (a truncated or edited file?)")
    stray = [k for k in files if k not in keys and k != SPEC_KEY]
    if stray:
        raise LoadError(f"the archive holds array(s) {stray[:10]} that its spec does not list")
    weights = {}
    for name, key in mapping:
        try:
            weights[name] = read_member(data, key, shape=plan.shapes[name])
        except ValueError as exc:
            raise LoadError(f"weight '{name}': {exc}") from None
    return _build(plan, _check_weights(weights, plan.shapes))


def _wrap(path, exc):
    if isinstance(exc, GraphError):
        return LoadError(f"{path}: {exc}")
    return LoadError(f"{path}: cannot read the net ({type(exc).__name__}: {exc}); the file is damaged or not "
                     f"a tinygraph net")


def _path(path):
    try:
        return os.fspath(path)
    except TypeError:
        raise LoadError(f"expected a file path, got {_kind(path)}") from None


def load(path):
    """Read a net written by ``net.save``.  Never unpickles; any problem is a LoadError naming the file."""
    path = _path(path)
    data = open_npz(path, error=LoadError)
    try:
        with data:
            return _from_npz(data)
    except Exception as exc:
        raise _wrap(path, exc) from exc


def load_spec_file(path):
    """Build a net from a JSON spec file (``net.spec()`` written as JSON); weights start random from its seed."""
    path = _path(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_SPEC_BYTES:
            raise LoadError(f"the file has {size:,} bytes, more than a spec may ({MAX_SPEC_BYTES:,})")
        with open(path, "rb") as f:
            blob = f.read(MAX_SPEC_BYTES + 1)
        return net_from_spec(_parse_json(blob))
    except FileNotFoundError:
        raise LoadError(f"{path}: no such file") from None
    except Exception as exc:
        raise _wrap(path, exc) from exc


def load_any(path):
    """A saved net (.npz) or a JSON spec (.json), by extension, else by the file's first bytes."""
    path = _path(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        return load(path)
    if ext == ".json":
        return load_spec_file(path)
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
    except FileNotFoundError:
        raise LoadError(f"{path}: no such file") from None
    except OSError as exc:
        raise LoadError(f"{path}: cannot read the file ({exc})") from exc
    if zipfile.is_zipfile(path):
        return load(path)
    if head.startswith(b"{"):
        return load_spec_file(path)
    raise LoadError(f"{path}: neither a saved net (.npz) nor a JSON spec (.json)")
