"""Saving and loading parameter values: one .npz file, never pickled, written atomically.

Files are plain numpy archives (a zip of .npy members), so numpy alone can read
them; loading refuses object arrays, so opening a file never runs code.  Every
write goes to a temporary file next to the target and is renamed over it, so a
crash mid-write leaves the previous file intact.
"""

import os
import tempfile
import zipfile

import numpy as np

from .errors import GraphError
from .constraints import _TOL as CONSTRAINT_TOL
from .graph import note_param_write

__all__ = ["save_params", "load_params", "atomic_write", "write_npz", "PersistError"]


class PersistError(GraphError, ValueError):
    """A file that cannot be read as what was asked, or that does not fit the graph or net."""


# ------------------------------------------------------------------ writing

def _new_file_mode(path):
    """The mode a plainly created file would get (an existing file keeps its own), since mkstemp uses 0600."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _check_path(path):
    try:
        return os.fspath(path)
    except TypeError:
        raise PersistError(f"a file path must be a str or os.PathLike, got {type(path).__name__} {path!r}") from None


def _check_graph(graph, what):
    from .graph import Graph
    if not isinstance(graph, Graph):
        raise PersistError(f"{what}: the first argument must be a tinygraph Graph, got {type(graph).__name__}")


def atomic_write(path, write_fn):
    """Write ``path`` through ``write_fn(binary_file)`` so that readers see the old or the new file, never half.

    The data goes to a temporary file in the same folder (same filesystem, so the
    rename is atomic), is flushed and fsynced, then ``os.replace``-d over ``path``.
    On any error the temporary file is removed and the old file is untouched.
    Saving through a symlink updates the file it points to.  Returns ``path``.
    """
    path = _check_path(path)
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    if os.path.isdir(target):
        raise PersistError(f"cannot write '{path}': it is a folder; give a file name")
    if not os.path.isdir(folder):
        raise PersistError(f"cannot write '{path}': the folder '{folder}' does not exist; create it first")
    mode = _new_file_mode(target)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(target) + ".", suffix=".tmp")
    except OSError as exc:
        raise PersistError(f"cannot write '{path}': {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable (POSIX); not possible everywhere, and not needed for correctness
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def write_npz(fileobj, arrays):
    """Write ``{key: array}`` as an uncompressed .npz into an open binary file.

    Unlike ``np.savez`` this never appends ".npz" to a name, accepts any key (even
    "file"), and refuses object arrays (they would need pickle to read back).
    """
    with zipfile.ZipFile(fileobj, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            arr = np.asanyarray(arr)
            if arr.dtype.hasobject:
                raise PersistError(f"array '{key}' holds Python objects (dtype {arr.dtype}); only numeric "
                                   f"arrays can be saved without pickle")
            with zf.open(key + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(arr), allow_pickle=False)


# ------------------------------------------------------------------ reading

def _reject(path, what, fix=""):
    return PersistError(f"{path}: {what}" + (f"; {fix}" if fix else ""))


def open_npz(path, error=PersistError):
    """``np.load(path, allow_pickle=False)`` as an NpzFile, any failure turned into ``error`` naming the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise error(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise error(f"{path}: not a .npz archive (the file is truncated, damaged or of another kind)")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise error(f"{path}: cannot read the archive ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):  # pragma: no cover - is_zipfile checked above
        raise error(f"{path}: not a .npz archive")
    return data


def member_header(npz, key):
    """(shape, fortran_order, dtype) of member ``key``, read from its header without reading the data,
    so a hostile file cannot make us allocate what it declares."""
    fmt = np.lib.format
    with npz.zip.open(key + ".npy") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            return fmt.read_array_header_1_0(f)
        if version == (2, 0):
            return fmt.read_array_header_2_0(f)
        raise ValueError(f"unsupported .npy format version {version}")


def read_member(npz, key, shape=None, max_entries=None):
    """Read one array after checking its header: numeric, not an object array, and (when given) of
    ``shape`` or at most ``max_entries`` entries.  Raises ValueError saying what is wrong."""
    got_shape, _, dtype = member_header(npz, key)
    if dtype.hasobject:
        raise ValueError(f"array '{key}' holds pickled Python objects (dtype {dtype}); refusing to unpickle")
    if shape is not None and tuple(got_shape) != tuple(shape):
        raise ValueError(f"array '{key}' has shape {tuple(got_shape)}, expected {tuple(shape)}")
    if max_entries is not None and int(np.prod(got_shape, dtype=object)) > max_entries:
        raise ValueError(f"array '{key}' declares shape {tuple(got_shape)}, more than {max_entries} entries")
    with npz.zip.open(key + ".npy") as f:  # (the member whose header was checked: npz[key] may pick
        arr = np.lib.format.read_array(f, allow_pickle=False)  # another one, 'a.npy' for a param 'a')
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


# ------------------------------------------------------------------ params

def save_params(graph, path):
    """Write every parameter's value, keyed by node name, to one .npz file (atomically).

    Tied copies are saved each under their own name.  Returns ``path``.
    """
    _check_graph(graph, "save_params")
    arrays = {p.name: p.value for p in graph.params}
    return atomic_write(path, lambda f: write_npz(f, arrays))


def load_params(graph, path, strict=True):
    """Read parameter values saved by ``save_params`` into ``graph``'s params, in place.

    Values are written into ``param.value[...]`` (the array object stays, so tied
    copies sharing one storage stay shared, and optimizers keep their references).
    Everything is checked before anything is written: with ``strict`` the file must
    hold exactly the graph's param names; every array must have the param's shape
    and finite float values.  ``strict=False`` loads the names both have.

    Raises PersistError naming the file, the param, the shapes and the fix.
    """
    _check_graph(graph, "load_params")
    _check_path(path)
    params = {p.name: p for p in graph.params}
    data = open_npz(path)
    try:
        with data:
            names = set(data.files)
            missing = [n for n in params if n not in names]
            extra = sorted(names - set(params))
            if strict and missing:
                raise _reject(path, f"the file has no value for param(s) {missing[:10]} of graph '{graph.name}'",
                              "save the params of this same graph, or pass strict=False to load only the "
                              "names both have")
            if strict and extra:
                raise _reject(path, f"the file holds value(s) for {extra[:10]}, which graph '{graph.name}' has no "
                                    f"param of", "check that the file belongs to this graph, or pass strict=False")
            values = {}
            for name, p in params.items():
                if name not in names:
                    continue
                want = tuple(p.value.shape)
                try:
                    got = tuple(member_header(data, name)[0])
                except Exception as exc:
                    raise _reject(path, f"cannot read the value of param '{name}' ({exc})") from exc
                if got != want:
                    raise _reject(path, f"param '{name}' has shape {want} in graph '{graph.name}' but {got} in "
                                        f"the file", "the file was saved from a graph of other sizes")
                try:
                    arr = read_member(data, name, shape=want)
                except Exception as exc:
                    raise _reject(path, f"cannot read the value of param '{name}' ({exc})") from exc
                if arr.dtype.kind not in "fiu":
                    raise _reject(path, f"param '{name}': the file holds dtype {arr.dtype}, not numbers")
                if not np.all(np.isfinite(arr)):
                    raise _reject(path, f"param '{name}': the file holds NaN or infinity",
                                  "the saved training run had diverged")
                with np.errstate(over="ignore"):
                    cast = arr.astype(p.value.dtype)
                if not np.all(np.isfinite(cast)):
                    raise _reject(path, f"param '{name}': the file's values do not fit the param's {p.value.dtype} "
                                        f"(largest magnitude {np.max(np.abs(arr)):.3g})")
                values[name] = cast
    except PersistError:
        raise
    except Exception as exc:  # a member damaged inside an intact zip directory, ...
        raise _reject(path, f"cannot read the archive ({type(exc).__name__}: {exc})") from exc
    _refuse_broken_ties(graph, path, params, values)
    saved = {name: params[name].value.copy() for name in values}
    note_param_write()
    for name, arr in values.items():
        params[name].value[...] = arr
    broken = _broken_constraint(graph, {id(params[name].value) for name in values})
    if broken:  # put the values back: a graph's constraints hold after any call that returns
        for name, arr in saved.items():
            params[name].value[...] = arr
        names, res, tol = broken
        raise _reject(path, f"the values would break the constraint over {names} of graph '{graph.name}' "
                            f"(relative residual {res:.3g} > {tol:.3g})",
                      "save and load the params of a graph with the same constraints, or load into a graph "
                      "without them and add the constraints with project_init=True")
    return sorted(values)


def _broken_constraint(graph, written):
    """(names, residual, tolerance) of a constraint system over a written array (``written``:
    their ids) that the new values break, or None.  The tolerance is the constraints' own
    (1e-9 relative), or what the params' float type can hold (100 eps: float32 1.2e-5),
    whichever is larger."""
    for system in graph.constraints.systems:
        members = [m for v in system.variables for m in v.members]
        if not any(id(m.value) in written for m in members):
            continue
        tol = max(CONSTRAINT_TOL, 100 * max(np.finfo(m.value.dtype).eps for m in members))
        res = system.residual()
        if res > tol:
            return system.names(), res, tol
    return None


def _refuse_broken_ties(graph, path, params, values):
    """Params that hold one value must get one.  Params sharing one array: the file's values
    for them must agree (the last write would win).  A tie group: what each of its arrays
    will hold (the file's value for a member holding it, else its current value) must agree."""
    def refuse(a, b):
        raise _reject(path, f"params '{a}' and '{b}' hold one value in graph '{graph.name}' (tied, or one "
                            f"array) but the values to load differ",
                      "save the params of a graph with the same ties (tied copies hold one value)")
    will_hold = {}  # id(array) -> (a param's name, the value the array will hold)
    for p in params.values():
        if p.name in values:
            got = will_hold.get(id(p.value))
            if got is None:
                will_hold[id(p.value)] = (p.name, values[p.name])
            elif not np.array_equal(got[1], values[p.name]):
                refuse(got[0], p.name)
    for tie in graph.constraints.ties:
        held = [will_hold.get(id(m.value), (m.name, m.value)) for m in tie.members if m.name in params]
        for name, arr in held[1:]:
            if not np.array_equal(arr, held[0][1]):
                refuse(held[0][0], name)
