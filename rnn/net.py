"""RecurrentNet: groups of units and delayed connections between them.

Semantics, for t = 1..T: the total input of group g is the sum over its
connections src -> g (delay d) of ``state[src][max(t - d, 0)] @ W[src->g]`` plus
``bias:g``; its state is the activation of that.  Layer 0 holds the initial
states.  ``net.weights`` holds the arrays every unrolled copy uses as storage.
"""

from dataclasses import dataclass

import networkx as nx
import numpy as np

from tinygraph.errors import GraphError

ACTIVATIONS = ("logistic", "tanh", "linear", "relu", "softmax")
ROLES = ("input", "hidden", "output")
MAX_UNITS = 1_000_000


class NetError(GraphError, ValueError):
    """A malformed net: unknown group, bad size, zero-delay cycle, ..."""


@dataclass
class Group:
    name: str
    size: int
    activation: str = "logistic"
    role: str = "hidden"
    bias: bool = True
    initial: object = None  # None (default), "zero", float, array, or "learned"

    @property
    def learned(self):
        """True when the initial state is a trained parameter (``init:<name>`` in net.weights)."""
        return isinstance(self.initial, str) and self.initial == "learned"

    def default_initial(self):
        """The fixed initial state when none was given: 0.5 for logistic units (the lecture's), else 0."""
        return 0.5 if self.activation == "logistic" else 0.0


@dataclass
class Connection:
    name: str
    src: str
    dst: str
    delay: int = 1


def _check_group_name(name):
    if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
        raise NetError(f"group names must be non-empty strings of letters, digits and '_', got {name!r}")


class RecurrentNet:
    """A recurrent net built from groups of units and (delayed) connections.

    Parameters
    ----------
    name : str
    seed : int
        Seeds the random initial weights, so a net is the same every run.
    """

    def __init__(self, name="net", seed=0):
        self.name = name
        self.seed = seed
        self.groups = {}
        self.connections = {}
        self.weights = {}
        self._rng = np.random.default_rng(seed)

    # ------------------------------------------------------------ building
    def add_group(self, name, size, activation=None, role="hidden", bias=None, initial=None):
        """Add a group of ``size`` units.  ``initial``: None (0.5 for logistic, else 0),
        "zero", a float, an array of ``size`` values, or "learned" (a trained parameter).
        Input groups default to a linear activation without bias.

        Raises NetError for a duplicate or malformed name, a bad size, activation or role.
        """
        _check_group_name(name)
        if name in self.groups:
            raise NetError(f"net '{self.name}' already has a group '{name}'")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 0 < size <= MAX_UNITS:
            raise NetError(f"group '{name}': size must be an int in 1..{MAX_UNITS}, got {size!r}")
        if role not in ROLES:
            raise NetError(f"group '{name}': role must be one of {ROLES}, got {role!r}")
        if activation is None:
            activation = "linear" if role == "input" else "logistic"
        if activation not in ACTIVATIONS:
            raise NetError(f"group '{name}': activation must be one of {ACTIVATIONS}, got {activation!r}")
        if bias is None:
            bias = role != "input"
        if not isinstance(bias, (bool, np.bool_)):
            raise NetError(f"group '{name}': bias must be True or False, got {bias!r}")
        group = Group(name, int(size), activation, role, bool(bias), None)
        self.groups[name] = group
        try:
            self.set_initial(name, initial)
        except NetError:
            del self.groups[name]
            raise
        if group.bias:
            self.weights[f"bias:{name}"] = np.zeros(group.size)
        return group

    def set_initial(self, name, initial):
        """Change a group's initial state (see add_group); nothing changes when it is refused."""
        group = self.group(name)
        if initial is None or (isinstance(initial, str) and initial == "zero"):
            value = None if initial is None else 0.0
        elif isinstance(initial, str):
            if initial != "learned":
                raise NetError(f"group '{name}': initial must be None, 'zero', a number, an array or "
                               f"'learned', got {initial!r}")
            value = "learned"
        else:
            if isinstance(initial, (bool, np.bool_)):
                raise NetError(f"group '{name}': initial must be a number, an array, 'zero' or 'learned', not a bool")
            try:
                arr = np.asarray(initial, dtype=np.float64)
            except (TypeError, ValueError):
                raise NetError(f"group '{name}': the initial state must be a number or an array of "
                               f"{group.size} numbers, got {initial!r}") from None
            if arr.ndim != 0 and arr.shape != (group.size,):
                raise NetError(f"group '{name}': an initial state array must have shape ({group.size},), "
                               f"got {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise NetError(f"group '{name}': the initial state must be finite")
            value = float(arr) if arr.ndim == 0 else arr.copy()
        self.weights.pop(f"init:{name}", None)
        group.initial = value
        if isinstance(value, str):  # "learned"
            # a small random start, as the lecture suggests, around the unit's resting value
            self.weights[f"init:{name}"] = group.default_initial() + 0.1 * self._rng.standard_normal(group.size)

    def connect(self, src, dst, delay=None, weight=None, scale=1.0, name=None):
        """Connect group ``src`` to group ``dst`` with a delay of ``delay`` steps.

        ``delay`` defaults to 1 for a group to itself and 0 otherwise.  The weight
        (``src.size x dst.size``) starts random with std ``scale / sqrt(src.size)``
        unless ``weight`` is given.  Delay-0 connections must not form a cycle.

        Raises NetError for unknown groups, a bad delay or weight, or a zero-delay cycle (named).
        """
        s = self.group(src, "connect")
        d = self.group(dst, "connect")
        if delay is None:
            delay = 1 if src == dst else 0
        if isinstance(delay, bool) or not isinstance(delay, (int, np.integer)) or delay < 0:
            raise NetError(f"connection {src}->{dst}: delay must be an int >= 0, got {delay!r}")
        if d.role == "input":
            raise NetError(f"connection {src}->{dst}: '{dst}' is an input group; input groups take clamped "
                           f"values and have no incoming connections (make it role='hidden')")
        if name is None:
            name = f"{src}->{dst}"
            if name in self.connections:
                name = f"{src}->{dst}[d{delay}]"
        if not isinstance(name, str) or not name:
            raise NetError(f"connection {src}->{dst}: name must be a non-empty string, got {name!r}")
        if name.startswith(("bias:", "init:")):
            raise NetError(f"connection {src}->{dst}: names beginning with 'bias:' or 'init:' are kept for the "
                           f"groups' biases and learned initial states; pass another name= (got {name!r})")
        if name in self.weights:
            raise NetError(f"net '{self.name}' already has a weight named '{name}'; pass another name=")
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)) or not np.isfinite(scale):
            raise NetError(f"connection {src}->{dst}: scale must be a finite number, got {scale!r}")
        if weight is None:
            weight = self._rng.standard_normal((s.size, d.size)) * (scale / np.sqrt(s.size))
        else:
            try:
                weight = np.array(weight, dtype=np.float64)
            except (TypeError, ValueError):
                raise NetError(f"connection {src}->{dst}: weight must be a numeric array of shape "
                               f"({s.size}, {d.size})") from None
            if not np.all(np.isfinite(weight)):
                raise NetError(f"connection {src}->{dst}: the weight is not finite (NaN or infinity)")
            if weight.shape != (s.size, d.size):
                raise NetError(f"connection {name}: weight must have shape ({s.size}, {d.size}) "
                               f"(src units x dst units), got {weight.shape}")
        conn = Connection(name, src, dst, int(delay))
        self.connections[name] = conn
        if conn.delay == 0:
            try:
                self.group_order()
            except NetError:
                del self.connections[name]
                raise
        self.weights[name] = weight
        return conn

    # ------------------------------------------------------------ queries
    def group(self, name, where="net"):
        try:
            return self.groups[name]
        except (KeyError, TypeError):
            raise NetError(f"{where}: net '{self.name}' has no group {name!r} "
                           f"(groups: {list(self.groups)})") from None

    def incoming(self, dst):
        return [c for c in self.connections.values() if c.dst == dst]

    @property
    def dtype(self):
        """The float dtype the weights share (float64 unless the user stored, e.g., float32 arrays)."""
        return np.result_type(*self.weights.values()) if self.weights else np.dtype(np.float64)

    @property
    def max_delay(self):
        return max((c.delay for c in self.connections.values()), default=0)

    def group_order(self):
        """Groups in an order where every delay-0 source comes before its destination.

        Raises NetError naming the cycle when delay-0 connections form one.
        """
        G = nx.DiGraph()
        G.add_nodes_from(self.groups)
        G.add_edges_from((c.src, c.dst) for c in self.connections.values() if c.delay == 0)
        try:
            # in the order the groups were added: the same order every run
            position = {g: i for i, g in enumerate(self.groups)}
            return list(nx.lexicographical_topological_sort(G, key=position.__getitem__))
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(G)
            path = " -> ".join([a for a, _ in cycle] + [cycle[0][0]])
            raise NetError(f"net '{self.name}': the delay-0 connections form a cycle {path}; a unit cannot "
                           f"depend on itself within one time step: give one of them delay=1") from None

    def __repr__(self):
        return (f"<RecurrentNet '{self.name}': groups {[(g.name, g.size) for g in self.groups.values()]}, "
                f"connections {[(c.name, c.delay) for c in self.connections.values()]}>")

    # ------------------------------------------------------------ unrolling
    def unroll(self, steps, reduce="sum"):
        """The layered feed-forward graph: one layer per time step, weights tied across steps.

        Raises NetError for steps < 1 or a bad reduce.
        """
        from .unroll import Unrolled
        return Unrolled(self, steps, reduce=reduce)

    # ------------------------------------------------------------ spec and files
    def spec(self):
        """The net's structure as JSON-ready data (arrays are saved separately)."""
        from .persist import net_spec
        return net_spec(self)

    def save(self, path):
        """Write one .npz file: the spec as JSON plus every weight array (atomic; no pickle)."""
        from .persist import save_net
        return save_net(self, path)
