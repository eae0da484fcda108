"""tinygraph: a small symbolic tensor graph with reverse-mode autodiff on numpy.

Build a graph once, run it many times with feeds, and read dE/d(anything).
"""

from .errors import (ConstraintError, FeedError, GraphError, NodeTypeError, NonFiniteError, ShapeError,
                     UnknownNodeError, UnknownOpError)
from .graph import Graph
from .node import Node
from .autodiff import Activations, Gradients
from .ops import (add, concat, cross_entropy, div, exp, getitem, log, log_softmax, logistic, matmul, mean, mul,
                  neg, pow, relu, reshape, sigmoid, softmax, squared_error, stop_gradient, sub, sum, tanh,
                  transpose, clamp, defop, add_n, identity,
                  weighted_squared_error, broadcast_like)
from .check import check_gradients, GradientCheck

__version__ = "0.1.0"
from .optim import SGD, Adam, Optimizer
from .render import render
from .io import save_params, load_params, PersistError
