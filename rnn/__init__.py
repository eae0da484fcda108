"""rnn: recurrent nets written out as layered feed-forward tinygraph graphs with tied weights.

``RecurrentNet`` describes groups and delayed connections; ``net.unroll(T)`` emits
the feed-forward graph (one layer per step, weight copies tied); ``bptt`` is the
time-domain reference; ``check_equivalence`` proves the two views agree.
"""

from .net import RecurrentNet, Group, Connection, NetError
from .data import Clamp, Target, DataError
from .unroll import Unrolled, RunResult
from .bptt import bptt, BPTTResult
from .check import check_equivalence, EquivalenceReport
from .inspect import inspect, Inspection
from . import tasks
from .train import train, SequenceData
from .render import render, render_side_by_side
from .persist import load, load_any, net_from_spec, LoadError
