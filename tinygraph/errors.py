"""Every error a user can cause is a GraphError, so one ``except`` catches them all.

The subclasses also inherit the built-in exception a Python user would expect
(ValueError for bad values and shapes, TypeError for wrong kinds, KeyError for
unknown names), so generic handlers keep working.
"""


class GraphError(Exception):
    """Base class of every user-facing tinygraph error."""


class ShapeError(GraphError, ValueError):
    """Shapes that cannot work together, found when the node is built or fed."""


class FeedError(GraphError, ValueError):
    """A missing, unknown or malformed feed given to ``Graph.forward``."""


class NodeTypeError(GraphError, TypeError):
    """A value of the wrong kind where a node (or a node of this graph) was expected."""


class UnknownNodeError(GraphError, KeyError):
    """A name or node that the graph or the activations do not hold."""

    def __str__(self):  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class UnknownOpError(GraphError, KeyError):
    """An op name with no entry (or no derivative rule) in the op registry."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class NonFiniteError(GraphError, FloatingPointError):
    """A NaN or infinity appeared; the message names the first node that produced it."""


class ConstraintError(GraphError, ValueError):
    """A tie or linear constraint that is malformed, inconsistent or violated."""
