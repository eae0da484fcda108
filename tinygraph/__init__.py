"""tinygraph: a small symbolic tensor graph with reverse-mode autodiff on numpy.

Build a graph once, run it many times with feeds, and read dE/d(anything).
"""

from .allocator import keep_freed_memory
from .errors import (ConstraintError, FeedError, GraphError, NodeTypeError, NonFiniteError, ShapeError,
                     UnknownNodeError, UnknownOpError)
from .graph import Graph, note_param_write
from .node import Node
from .autodiff import Activations, Gradients
from .ops import (add, add_n, broadcast_like, clamp, concat, cross_entropy, defop, div, exp, getitem, identity,
                  log, log_softmax, logistic, matmul, mean, mul, neg, pow, relu, reshape, sigmoid, softmax,
                  squared_error, stop_gradient, sub, sum, tanh, transpose, weighted_squared_error)
from .check import GradientCheck, check_gradients
from .optim import SGD, Adam, Optimizer
from .io import PersistError, load_params, save_params
from .render import render

__version__ = "0.1.0"

keep_freed_memory()  # runs allocate afresh each time: let malloc reuse the freed blocks (allocator.py)
