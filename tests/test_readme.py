"""The README's tour must run as written (documentation that drifts is worse than none)."""

import pathlib
import re

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_tour_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README lost its tour"
    monkeypatch.chdir(tmp_path)
    np.random.seed(0)
    namespace = {}
    exec(compile(blocks[0], "README.md tour", "exec"), namespace)
    out = namespace["out"]
    ref = namespace["ref"]
    # the tour's claims: the unrolled graph and the time-domain loop agree, and the net round-trips
    assert abs(out.loss - ref.loss) <= 1e-12 * max(1.0, abs(ref.loss))
    net, net2 = namespace["net"], namespace["net2"]
    assert all(np.array_equal(net.weights[k], net2.weights[k]) for k in net.weights)
    assert "PASS" in capsys.readouterr().out
