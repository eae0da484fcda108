"""Drawing graphs: the DOT text is checked against the graph's own structure (no
Graphviz needed); a second group renders real SVG/PNG/PDF with `dot` and reads them back."""

import html
import os
import re
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.render import (GraphvizNotFoundError, RenderError, TooManyNodesError, full_text, node_id, palette,
                              summarize, write)
from tinygraph.shapes import fmt

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's 'dot' is not installed (apt-get install graphviz / brew install "
                                      "graphviz); the DOT-source tests still ran")

SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}"


# ----------------------------------------------------------------- fixtures and DOT parsing

def mlp():
    rng = np.random.default_rng(3)
    g = tg.Graph("mlp")
    x = g.input("x", shape=(None, 3))
    y = g.input("y", shape=(None, 2))
    W = g.param("W", rng.standard_normal((3, 2)))
    b = g.param("b", np.array([0.5, -1.25]))
    out = tg.tanh(x @ W + b, name="out")
    loss = tg.sum((out - y) ** 2, name="sse") / 2
    feeds = {"x": rng.standard_normal((6, 3)), "y": rng.standard_normal((6, 2))}
    acts = g.forward(feeds)
    return g, acts, acts.backward(loss)


NODE_RE = re.compile(r"^\t(\w+) \[(.*)\]$")
EDGE_RE = re.compile(r"^\t(\w+) -> (\w+)(?: \[(.*)\])?$")
QUOTED = r'"((?:[^"\\]|\\.)*)"'


def parse(source):
    """({node id: attribute text}, [(tail, head, attribute text)]) from graphviz's DOT output."""
    nodes, edges = {}, []
    for line in source.splitlines():
        m = EDGE_RE.match(line)
        if m:
            edges.append((m.group(1), m.group(2), m.group(3) or ""))
            continue
        m = NODE_RE.match(line)
        if m and m.group(1) not in ("graph", "node", "edge"):
            assert m.group(1) not in nodes, f"node {m.group(1)} declared twice"
            nodes[m.group(1)] = m.group(2)
    return nodes, edges


def attr(text, key):
    m = re.search(rf"(?:^| ){key}=(?:{QUOTED}|(<.*>)(?= \w+=|$)|([^ \"]+))", text)
    assert m, f"no {key}= in {text[:200]}"
    if m.group(1) is not None:  # undo DOT string escapes
        return re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1), m.group(1))
    return m.group(2) if m.group(2) is not None else m.group(3)


def label_text(label):
    """The visible text of an HTML-like label, tags dropped and entities decoded."""
    return html.unescape(re.sub(r"<BR[^>]*>", "\n", re.sub(r"<(?!BR)[^>]*>", "", label)))


def numbers(text):
    return [float(v) for v in re.findall(r"-?\d+\.?\d*(?:e[-+]?\d+)?", text)]


# ----------------------------------------------------------------- structure (DOT source)

def test_one_node_per_graph_node_and_edges_in_input_order():
    g, acts, grads = mlp()
    nodes, edges = parse(tg.render(g, acts, grads).source)
    assert set(nodes) == {f"n{n.index}" for n in g.nodes}
    expected = [(f"n{i.index}", f"n{n.index}") for n in g.nodes for i in n.inputs]
    assert [(t, h) for t, h, _ in edges] == expected
    # operand positions are labelled on multi-input nodes only (a - b is not b - a)
    for (t, h, a), (node, pos) in zip(edges, [(n, p) for n in g.nodes for p in range(len(n.inputs))]):
        if len(node.inputs) > 1:
            assert attr(a, "headlabel") == str(pos)
        else:
            assert "headlabel" not in a


def test_same_input_twice_gives_two_labelled_edges():
    g = tg.Graph("square")
    x = g.input("x", shape=(2,))
    y = tg.mul(x, x, name="y")
    _, edges = parse(tg.render(g).source)
    assert [(t, h, attr(a, "headlabel")) for t, h, a in edges] == [(node_id(x), node_id(y), "0"),
                                                                   (node_id(x), node_id(y), "1")]


def test_labels_name_op_and_shape():
    g, _, _ = mlp()
    nodes, _ = parse(tg.render(g).source)
    for n in g.nodes:
        text = label_text(attr(nodes[node_id(n)], "label"))
        assert n.name in text and n.op in text and fmt(n.shape) in text, text


def test_kinds_are_styled_differently():
    g, _, _ = mlp()
    nodes, _ = parse(tg.render(g).source)

    def style(name):
        a = nodes[node_id(g[name])]
        return attr(a, "shape"), attr(a, "fillcolor"), attr(a, "style")

    kinds = {"input": style("x"), "param": style("W"), "op": style("out"),
             "const": style(next(n.name for n in g.nodes if n.op == "const"))}
    assert len(set(kinds.values())) == 4, kinds
    assert style("x") == style("y") and style("W") == style("b")  # same kind, same look
    assert kinds["input"][1] != kinds["param"][1] and kinds["input"][0] != kinds["param"][0]


def test_small_values_literally_large_as_shape_and_norm():
    g, acts, grads = mlp()
    nodes, _ = parse(tg.render(g, acts, grads).source)
    # b has 2 entries: its numbers appear as they are
    b_text = label_text(attr(nodes[node_id(g["b"])], "label"))
    value_line = next(line for line in b_text.splitlines() if line.startswith("="))
    assert numbers(value_line) == [0.5, -1.25]
    # W's gradient (6 entries) appears entry by entry, to 3 significant digits
    w_text = label_text(attr(nodes[node_id(g["W"])], "label"))
    grad_part = w_text[w_text.index("grad"):]
    np.testing.assert_allclose(numbers(grad_part), grads[g["W"]].ravel(), rtol=5e-3, atol=1e-12)
    # x holds 18 entries: shape, norm, min and max instead
    x_val = acts[g["x"]]
    x_text = label_text(attr(nodes[node_id(g["x"])], "label"))
    assert "shape (6, 3)" in x_text and "norm" in x_text
    stats = numbers(x_text[x_text.index("norm"):x_text.index("grad")])
    np.testing.assert_allclose(stats, [np.linalg.norm(x_val), x_val.min(), x_val.max()], rtol=5e-3)
    x_grad = grads[g["x"]]
    gstats = numbers(x_text[x_text.index("norm", x_text.index("grad")):])
    np.testing.assert_allclose(gstats, [np.linalg.norm(x_grad), x_grad.min(), x_grad.max()], rtol=5e-3)


def test_no_values_without_acts_and_loss_marked_with_grads():
    g, acts, grads = mlp()
    plain, _ = parse(tg.render(g).source)
    assert all("grad" not in label_text(attr(a, "label")) for a in plain.values())
    assert "=" not in label_text(attr(plain[node_id(g["W"])], "label"))
    drawn, _ = parse(tg.render(g, acts, grads).source)
    loss = grads.loss
    assert attr(drawn[node_id(loss)], "peripheries") == "2"
    assert "peripheries" not in drawn[node_id(g["sse"])]


def test_unreached_and_uncomputed_nodes_say_so():
    g, acts, grads = mlp()
    extra = tg.exp(g["out"], name="after_the_run")  # built after the forward run
    nodes, _ = parse(tg.render(g, acts, grads).source)
    text = label_text(attr(nodes[node_id(extra)], "label"))
    assert "not computed" in text
    g2 = tg.Graph("side")
    a = g2.param("a", np.ones(2))
    unused = g2.param("unused", np.ones(2))
    loss = tg.sum(a * a)
    acts2 = g2.forward({})
    text = label_text(attr(parse(tg.render(g2, acts2, acts2.backward(loss)).source)[0][node_id(unused)], "label"))
    assert "not reached" in text


def test_tooltips_hold_the_full_value_and_gradient():
    g, acts, grads = mlp()
    nodes, _ = parse(tg.render(g, acts, grads).source)
    for n in g.nodes:
        tip = attr(nodes[node_id(n)], "tooltip")
        assert tip.startswith(f"{n.name}: {n.op}")
        value_part = tip[tip.index("\n", tip.index("value:")) + 1:tip.index("gradient")]
        np.testing.assert_allclose(numbers(value_part), np.ravel(acts[n]), rtol=1e-5, atol=1e-6)
        grad_part = tip[tip.index("\n", tip.index("gradient")) + 1:]
        np.testing.assert_allclose(numbers(grad_part), np.ravel(grads[n]), rtol=1e-5, atol=1e-6)


def test_ids_have_no_colon_and_odd_names_are_escaped():
    g = tg.Graph("odd")
    a = g.input('h:t1 <b> & "q" \\n', shape=(2,))
    out = tg.tanh(a, name="out:0")
    nodes, edges = parse(tg.render(g, title='title with "quotes" & <tags>').source)
    assert all(":" not in i for i in nodes) and all(":" not in t + h for t, h, _ in edges)
    text = label_text(attr(nodes[node_id(a)], "label"))
    assert a.name in text and "out:0" in label_text(attr(nodes[node_id(out)], "label"))
    assert attr(nodes[node_id(a)], "tooltip").startswith(a.name + ":")


def test_nodes_subset_and_outside_inputs():
    g, acts, grads = mlp()
    keep = [g["out"], "sse"]  # nodes or names
    nodes, edges = parse(tg.render(g, acts, grads, nodes=keep).source)
    subset = {g["out"], g["sse"]}
    outside = {i for n in subset for i in n.inputs if i not in subset}
    assert set(nodes) == {node_id(n) for n in subset | outside}
    for o in outside:  # drawn as name-only stubs, not full nodes
        assert "dashed" in attr(nodes[node_id(o)], "style") and label_text(attr(nodes[node_id(o)], "label")) == o.name
    expected = [(node_id(i), node_id(n)) for n in sorted(subset, key=lambda n: n.index) for i in n.inputs]
    assert [(t, h) for t, h, _ in edges] == expected


def test_max_nodes_error():
    g, _, _ = mlp()
    with pytest.raises(TooManyNodesError) as info:
        tg.render(g, max_nodes=len(g.nodes) - 1)
    assert isinstance(info.value, tg.GraphError)
    msg = str(info.value)
    assert "nodes=" in msg and "max_nodes" in msg and str(len(g.nodes)) in msg
    tg.render(g, max_nodes=len(g.nodes))  # exactly at the limit is fine
    assert len(parse(tg.render(g, nodes=g.nodes[:3], max_nodes=3).source)[0]) == 3


def test_wrong_graph_and_unknown_names_are_render_errors():
    g, acts, _ = mlp()
    other, other_acts, _ = mlp()
    with pytest.raises(RenderError, match="graph"):
        tg.render(g, other_acts)
    with pytest.raises(RenderError, match="nope"):
        tg.render(g, nodes=["nope"])
    with pytest.raises(tg.GraphError):
        tg.render(g, highlight={other["W"]: "#FF0000"})


def test_highlight_overrides_fill_and_legend_entries():
    g, acts, grads = mlp()
    colours = palette(2)
    nodes, _ = parse(tg.render(g, acts, grads, highlight={g["W"]: colours[0], "b": "#0072B2"},
                               legend=[("tie group 1", colours[0])]).source)
    assert attr(nodes[node_id(g["W"])], "fillcolor") == colours[0]
    assert attr(nodes[node_id(g["b"])], "fillcolor") == "#0072B2"
    assert 'COLOR="#FFFFFF"' in attr(nodes[node_id(g["b"])], "label")  # white text on dark blue
    assert attr(nodes[node_id(g["x"])], "fillcolor") != colours[0]
    src = tg.render(g, legend=[("tie group 1", colours[0])]).source
    assert "tie group 1" in src and "param" in src
    assert "tie group" not in tg.render(g, legend=False).source


def chain(steps):
    g = tg.Graph("chain")
    x = g.input("x", shape=(None, 2))
    W = g.param("W", np.eye(2) * 0.5)
    h = x
    for _ in range(steps):
        h = tg.tanh(h @ W)
    return g, W


def test_far_uses_of_a_source_get_reference_stubs():
    g, W = chain(20)
    nodes, edges = parse(tg.render(g, stub_span=4).source)
    refs = [i for i in nodes if re.fullmatch(rf"{node_id(W)}r\d+", i)]
    assert refs, "a weight used over 40 layers should get reference stubs"
    assert all(":" not in i for i in refs)
    # each edge still ends at its consumer, and starts at the input or one of its references
    expected = [(i, n) for n in g.nodes for i in n.inputs]
    assert len(edges) == len(expected)
    for (t, h, _), (i, n) in zip(edges, expected):
        assert h == node_id(n) and (t == node_id(i) or t.startswith(node_id(i) + "r")), (t, i.name)
    assert {t for t, _, _ in edges} >= set(refs)  # every reference is used
    _, plain_edges = parse(tg.render(g, stub_span=None).source)
    assert [(t, h) for t, h, _ in plain_edges] == [(node_id(i), node_id(n)) for i, n in expected]


# ----------------------------------------------------------------- helpers

def test_summarize_and_full_text():
    assert summarize(np.array(2.5)) == "2.5"
    assert numbers(summarize(np.array([[1.0, -2.0], [3.14159, 4e-5]]))) == [1.0, -2.0, 3.14, 4e-5]
    big = np.arange(13.0)
    text = summarize(big)
    assert "shape (13,)" in text and "norm" in text and numbers(text[text.index("norm"):]) == pytest.approx(
        [np.linalg.norm(big), 0, 12], rel=5e-3)
    assert "2 non-finite" in summarize(np.r_[np.arange(20.0), np.nan, np.inf])
    assert summarize(np.zeros((0, 3))) == "shape (0, 3), empty"
    tip = full_text(np.arange(50.0))
    assert numbers(tip.split("\n", 1)[1]) == list(np.arange(50.0))  # every entry up to the threshold
    assert "..." in full_text(np.arange(5000.0))


def test_palette():
    assert palette(0) == []
    assert palette(3) == ["#E69F00", "#56B4E9", "#009E73"]  # Okabe-Ito first
    many = palette(60)
    assert len(set(many)) == 60 and all(re.fullmatch(r"#[0-9A-F]{6}", c) for c in many)
    with pytest.raises(ValueError):
        palette(-1)


# ----------------------------------------------------------------- real output through dot

def svg_nodes(path):
    root = ET.parse(path).getroot()
    out = {}
    for grp in root.iter(f"{SVG}g"):
        if grp.get("class") == "node":
            title = grp.find(f"{SVG}title").text
            tips = [a.get(f"{XLINK}title") for a in grp.iter(f"{SVG}a") if a.get(f"{XLINK}title")]
            out[title] = tips
    return out


@needs_dot
def test_svg_has_every_node_with_its_tooltip(tmp_path):
    g, acts, grads = mlp()
    path = write(tg.render(g, acts, grads), tmp_path / "mlp.svg")
    assert path == str(tmp_path / "mlp.svg")
    found = svg_nodes(path)
    assert sorted(found) == sorted(node_id(n) for n in g.nodes)
    for n in g.nodes:
        (tip,) = found[node_id(n)]
        assert tip.startswith(f"{n.name}: {n.op}") and "value:" in tip and "gradient" in tip
        assert numbers(tip[tip.index("\n", tip.index("value:")) + 1:tip.index("gradient")]) == pytest.approx(
            list(np.ravel(acts[n])), rel=1e-5, abs=1e-6)


@needs_dot
def test_odd_names_survive_dot(tmp_path):
    g = tg.Graph('odd "graph"')
    a = g.input('h:t1 <b> & "q" \\n', shape=(2,))
    tg.tanh(a, name="out:0")
    found = svg_nodes(write(tg.render(g, title="<&>"), tmp_path / "odd.svg"))
    assert len(found) == 2 and found[node_id(a)][0].startswith(a.name + ":")


@needs_dot
@pytest.mark.parametrize("ext, magic", [("svg", b"<?xml"), ("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_write_binary_formats(tmp_path, ext, magic):
    g, acts, grads = mlp()
    path = write(tg.render(g, acts, grads), tmp_path / "sub" / f"mlp.{ext}")
    data = open(path, "rb").read()
    assert data.startswith(magic) and len(data) > 1000
    assert os.stat(path).st_mode & 0o044  # readable like any other file, not a private temp file
    assert [p.name for p in (tmp_path / "sub").iterdir()] == [f"mlp.{ext}"]  # no temp file left


@needs_dot
def test_long_chain_renders_quickly(tmp_path):
    g, _ = chain(150)  # 452 nodes, one weight used at every step
    found = svg_nodes(write(tg.render(g), tmp_path / "chain.svg"))
    assert {i for i in found if re.fullmatch(r"n\d+", i)} == {node_id(n) for n in g.nodes}


def test_write_dot_source_needs_no_binary(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot anywhere
    g, acts, grads = mlp()
    drawing = tg.render(g, acts, grads)
    for name in ("mlp.dot", "mlp.gv"):
        path = write(drawing, tmp_path / name)
        assert open(path, encoding="utf-8").read() == drawing.source


def test_missing_dot_says_how_to_install(tmp_path, monkeypatch):
    g, _, _ = mlp()
    drawing = tg.render(g)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(GraphvizNotFoundError) as info:
        write(drawing, tmp_path / "mlp.svg")
    msg = str(info.value)
    assert isinstance(info.value, tg.GraphError)
    for hint in ("apt-get install graphviz", "brew install graphviz", "https://graphviz.org/download/", ".dot"):
        assert hint in msg
    assert not (tmp_path / "mlp.svg").exists()


def test_dot_vanishing_after_the_check_gives_the_same_error(tmp_path, monkeypatch):
    g, _, _ = mlp()
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: "/usr/bin/dot")  # the check passes...
    monkeypatch.setenv("PATH", str(tmp_path))  # ...but graphviz cannot find the program
    with pytest.raises(GraphvizNotFoundError, match="apt-get install graphviz"):
        write(tg.render(g), tmp_path / "mlp.png")


def test_write_rejects_unknown_or_missing_extensions(tmp_path):
    g, _, _ = mlp()
    with pytest.raises(RenderError, match=r"\.svg"):
        write(tg.render(g), tmp_path / "mlp.docx")
    with pytest.raises(RenderError, match="extension"):
        write(tg.render(g), tmp_path / "mlp")


def test_a_node_named_with_brackets_renders(tmp_path):
    from tinygraph.render import write
    g = tg.Graph("g")
    p = g.param("]", np.ones(2))
    tg.sum(p * p, name="]]")
    out = write(tg.render(g), str(tmp_path / "b.svg"))
    assert os.path.getsize(out) > 0
