"""Pictures of recurrent nets: the folded net, the unrolled net and both side by side.

Most tests read the DOT text (``.source``) and need no Graphviz install; the last ones
render real SVG with ``dot`` and parse it as XML, checking what a reader sees: one
cluster per time step, one stroke colour per tied weight, the labels, the recurrent edge.
"""

import html
import importlib.util
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import rnn
from rnn.render import CHECK_BAD, CHECK_OK, CUT_COLOUR, tie_colours
from tinygraph.render import RenderError, TooManyNodesError, summarize

T = 4
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot program is not installed")


def adder():
    return rnn.tasks.BinaryAddition(bits=1).net()


def adder_run(net, T=T, truncate=None):
    """One example (1 + 1) of the lecture's adder: x clamped at every step, y targeted at t = 3, 4."""
    x = np.zeros((T, 1, 2))
    x[0, 0] = 1.0
    y = np.zeros((T - 2, 1, 1))
    y[-1] = 1.0
    ff = net.unroll(T)
    return ff.run([rnn.Clamp("x", x)], [rnn.Target("y", y, steps=list(range(3, T + 1)))], truncate=truncate)


# ----------------------------------------------------------------------------- reading DOT text
def step_clusters(source):
    return re.findall(r"subgraph (cluster_t\d+) \{", source)


def statements(source):
    """(kind, text) per node/edge statement; the graphviz package writes one statement per line."""
    out = []
    for line in source.splitlines():
        s = line.strip()
        if not s or s.startswith(("//", "subgraph", "}", "{", "graph ", "node ", "edge ", "digraph", "rank=")):
            continue
        if s.startswith(("label=", "color=", "style=", "tooltip=")):  # a cluster's own attributes
            continue
        out.append(("edge" if re.match(r"^\S+ -> \S+", s) else "node", s))
    return out


def attr(stmt, name):
    m = re.search(r'(?:^|[\s\[])' + name + r'=("(?:[^"\\]|\\.)*"|[^\s\]]+)', stmt)
    if m is None:
        return None
    v = m.group(1)
    return v[1:-1] if v.startswith('"') else v


def copy_edges(source):
    """{copy node name: (colour, statement)} of the edges drawing weight copies."""
    out = {}
    for kind, s in statements(source):
        if kind == "edge" and attr(s, "class") == "copy":
            name = attr(s, "tooltip").split(":")[0]
            out[name] = (attr(s, "color"), s)
    return out


def node_stmt(source, node_id):
    for kind, s in statements(source):
        if kind == "node" and s.startswith(node_id + " "):
            return s
    raise AssertionError(f"no node {node_id}")


# ----------------------------------------------------------------------------- unrolled net
def test_one_cluster_per_time_step_from_t0():
    net = adder()
    src = rnn.render(net.unroll(T)).source
    assert step_clusters(src) == [f"cluster_t{t}" for t in range(T + 1)]
    assert "rankdir=BT" in src  # t = 0 at the bottom, time going up


def test_long_sequences_are_elided():
    net = adder()
    src = rnn.render(net.unroll(40), max_steps=12, show_ends=3).source
    assert step_clusters(src) == [f"cluster_t{t}" for t in (0, 1, 2, 38, 39, 40)]
    assert "35 steps (t = 3 .. 37) not drawn" in src
    # at most max_steps: everything drawn
    assert len(step_clusters(rnn.render(net.unroll(12), max_steps=12).source)) == 13
    assert len(step_clusters(rnn.render(net.unroll(13), max_steps=12, show_ends=2).source)) == 4


def test_every_copy_of_a_weight_shares_one_colour_and_weights_differ():
    net = adder()
    ff = net.unroll(T)
    edges = copy_edges(rnn.render(ff).source)
    colours = {}
    for name in net.connections:
        copies = [c.name for c in ff.copies(name)]
        assert sorted(copies) == sorted(n for n in edges if n.startswith(f"W[{name}]@"))
        seen = {edges[c][0] for c in copies}
        assert len(seen) == 1, f"copies of {name} drawn in {seen}"
        colours[name] = seen.pop()
    assert len(set(colours.values())) == len(colours)
    assert colours == {n: c for n, c in tie_colours(net).items() if n in net.connections}


def test_legend_lists_every_weight_with_its_colour():
    net = adder()
    src = rnn.render(net.unroll(T)).source
    legend = node_stmt(src, "legend")
    for name, colour in tie_colours(net).items():
        assert f"<B>{html.escape(name)}</B>" in legend
        assert f'BGCOLOR="{colour}"' in legend
    # the biases' copies appear in their colour inside the state nodes
    assert tie_colours(net)["bias:h"] in src


def test_values_gradients_and_tied_gradient_on_the_picture():
    net = adder()
    run = adder_run(net)
    src = rnn.render(run, acts=run.acts, grads=run.grads).source
    em = run.emitted
    h3 = node_stmt(src, f"n{em.layers[3]['h'].index}")
    assert html.escape(summarize(run.acts[em.layers[3]["h"]][0], 6)) in h3
    assert "grad " in h3
    edges = copy_edges(src)
    for t, g in run.step_grads("h->h").items():
        assert f"|grad| {np.linalg.norm(g):.3g}" in edges[f"W[h->h]@t{t}"][1]
    legend = node_stmt(src, "legend")
    for name, total in run.weight_grads.items():
        text = html.escape(summarize(total, 9)).split("\n")[0]
        assert text in legend, name
    assert "sum of the 4 copies" in legend
    # thicker edges for bigger per-step gradients
    widths = {n: float(attr(s, "penwidth")) for n, (_, s) in edges.items()}
    norms = {f"W[h->y]@t{t}": np.linalg.norm(g) for t, g in run.step_grads("h->y").items()}
    assert max(norms, key=norms.get) == max(norms, key=lambda n: widths[n])


def test_clamped_and_targeted_states_are_marked_per_step():
    net = adder()
    run = adder_run(net)
    src = rnn.render(run).source
    em = run.emitted
    for t in range(1, T + 1):
        x = node_stmt(src, f"n{em.layers[t]['x'].index}")
        assert "clamped" in x and "penwidth=2.6" in x
        y = node_stmt(src, f"n{em.layers[t]['y'].index}")
        assert ("target" in y) == (t >= 3)
        assert ("peripheries=2" in y) == (t >= 3)
    # a partial clamp names its units
    ff = net.unroll(T)
    run2 = ff.run([rnn.Clamp("h", np.ones((1, 1, 2)), steps=[0], units=[0, 2])],
                  [rnn.Target("y", np.ones((T, 1, 1)), steps="all")])
    assert "clamped units 0, 2" in node_stmt(rnn.render(run2).source, f"n{run2.emitted.layers[0]['h'].index}")
    # a partial target too; the marks come from what unroll recorded, not from node names
    run3 = ff.run([rnn.Clamp("x", np.ones((T, 1, 2)))],
                  [rnn.Target("h", np.zeros((1, 1, 2)), steps=[2], units=[1, 2])])
    em3 = run3.emitted
    for node, *_ in em3.feeds:
        node.name = "renamed_" + node.name
    h2 = node_stmt(rnn.render(run3).source, f"n{em3.layers[2]['h'].index}")
    assert "target units 1, 2" in h2 and "peripheries=2" in h2


def test_check_colours_a_corrupted_copy_red():
    net = adder()
    x = np.random.default_rng(0).uniform(0, 1, (T, 2, 2))
    report = rnn.check_equivalence(net, T, [rnn.Clamp("x", x)], finite_differences=False)
    assert report.passed
    src = rnn.render(report.run, check=report).source
    assert {c for c, _ in copy_edges(src).values()} == {CHECK_OK}

    report.step_errors["h->h"][2] = 0.25  # a wrong derivative at one copy
    src = rnn.render(report.run, check=report).source
    edges = copy_edges(src)
    bad = {n for n, (c, _) in edges.items() if c == CHECK_BAD}
    assert bad == {"W[h->h]@t2"}
    assert "rel. err 2.5e-01" in edges["W[h->h]@t2"][1]
    clusters = dict(re.findall(r"subgraph (cluster_t\d+) \{\s*color=\"(#[0-9A-F]{6})\"", src))
    assert clusters["cluster_t2"] == CHECK_BAD
    assert {clusters[f"cluster_t{t}"] for t in (0, 1, 3, 4)} == {CHECK_OK}
    # the folded net shows the worst copy of each weight
    folded = rnn.render(net, check=report).source
    loop = [s for k, s in statements(folded) if k == "edge" and s.startswith("f_h -> f_h")][0]
    assert attr(loop, "color") == CHECK_BAD


def test_truncation_cut_is_drawn_between_cut_and_cut_plus_one():
    net = adder()
    run = adder_run(net, truncate=2)
    assert run.emitted.cut == 2
    src = rnn.render(run).source
    box = src[src.index("subgraph cluster_cut {"):]
    assert f'color="{CUT_COLOUR}"' in box.split("\n")[1] and "style=dashed" in box.split("\n")[1]
    assert "no gradient crosses this line" in box.split("\n")[1]
    # the steps 0..cut sit inside the box, cut+1.. outside it
    depth, inside = 0, []
    for line in box.splitlines():
        m = re.match(r"\s*subgraph (cluster_t\d+)", line)
        if m and depth >= 1:
            inside.append(m.group(1))
        depth += line.count("{") - line.count("}")
        if depth == 0:
            break
    assert inside == ["cluster_t0", "cluster_t1", "cluster_t2"]
    edges = copy_edges(src)
    crossing = {n for n, (_, s) in edges.items() if "style=dashed" in s}
    assert crossing == {f"W[{c}]@t3" for c in net.connections}
    assert "truncation" not in rnn.render(adder_run(net)).source


def test_units_draws_one_edge_per_weight_entry():
    net = adder()
    entries = sum(net.weights[c].size for c in net.connections)
    folded = rnn.render(net, units=True).source
    assert sum(1 for k, s in statements(folded) if k == "edge" and attr(s, "class") == "connection entry") == entries
    assert sum(1 for k, s in statements(folded) if k == "node" and s.startswith("f_")) == 6
    unrolled = rnn.render(net.unroll(T), units=True).source
    assert sum(1 for k, s in statements(unrolled) if k == "edge" and attr(s, "class") == "copy entry") == T * entries
    assert len(step_clusters(unrolled)) == T + 1


def test_units_refuses_big_nets_naming_size_and_limit():
    big = rnn.RecurrentNet("big")
    big.add_group("x", 10, role="input")
    big.add_group("h", 45)
    big.connect("x", "h")
    big.connect("h", "h")
    with pytest.raises(TooManyNodesError, match=r"55 units, more than max_units=40"):
        rnn.render(big, units=True)
    wide = rnn.RecurrentNet("wide")
    wide.add_group("h", 30)
    wide.connect("h", "h")
    with pytest.raises(TooManyNodesError, match=r"900 weight entries to draw, more than max_edges=400"):
        rnn.render(wide, units=True)
    # the unrolled limit counts the entries actually drawn: 12 steps x 18, or 5 x 18 once elided
    with pytest.raises(TooManyNodesError, match=r"216 weight entries.*max_edges=100"):
        rnn.render(adder().unroll(12), units=True, max_edges=100)
    assert rnn.render(adder().unroll(30), units=True, max_edges=100)
    assert rnn.render(big)  # group level always works
    assert rnn.render(wide, units=True, max_edges=900)


def test_folded_net_has_its_recurrent_self_loop_with_delay():
    net = adder()
    src = rnn.render(net).source
    edges = [s for k, s in statements(src) if k == "edge"]
    loop = [s for s in edges if s.startswith("f_h -> f_h")]
    assert len(loop) == 1 and len(edges) == len(net.connections)
    assert "delay 1" in loop[0] and "style=dashed" in loop[0]
    assert attr(loop[0], "color") == tie_colours(net)["h->h"]
    net0 = adder()
    net0.connect("x", "y", delay=0)
    same_step = [s for k, s in statements(rnn.render(net0).source) if k == "edge" and s.startswith("f_x -> f_y")]
    assert "style=solid" in same_step[0]


def test_side_by_side_has_both_pictures_and_the_caption():
    net = adder()
    src = rnn.render_side_by_side(net, steps=T).source
    assert "subgraph cluster_folded" in src and "subgraph cluster_unrolled" in src
    assert "recurrent net" in src and f"unrolled for {T} steps" in src
    assert "feed-forward net with one layer per time step whose weights are tied" in src
    assert step_clusters(src) == [f"cluster_t{t}" for t in range(T + 1)]
    # one colour per weight on both sides
    loop = [s for k, s in statements(src) if k == "edge" and s.startswith("f_h -> f_h")][0]
    assert attr(loop, "color") == {c for n, (c, _) in copy_edges(src).items() if n.startswith("W[h->h]")}.pop()
    run = adder_run(net)
    assert rnn.render_side_by_side(run, acts=run.acts, grads=run.grads, units=True).source


def test_ids_tooltips_and_errors():
    net = adder()
    run = adder_run(net, truncate=3)
    for dg in (rnn.render(net), rnn.render(net, units=True), rnn.render(run, acts=run.acts, grads=run.grads),
               rnn.render(net.unroll(40), units=True), rnn.render_side_by_side(net, steps=20)):
        for kind, s in statements(dg.source):
            ids = re.match(r"^(\S+)(?: -> (\S+))?", s).groups()
            assert all(":" not in i for i in ids if i)
            if kind == "node":
                assert attr(s, "tooltip"), s[:80]
    other = adder().unroll(T)
    other_run = other.run([rnn.Clamp("x", np.zeros((T, 1, 2)))], [rnn.Target("y", np.zeros((T, 1, 1)))])
    with pytest.raises(RenderError, match="acts/grads come from graph"):
        rnn.render(run, acts=other_run.acts)
    with pytest.raises(RenderError, match="folded net"):
        rnn.render(net, acts=run.acts)
    with pytest.raises(RenderError, match="expected a RecurrentNet"):
        rnn.render("adder")
    with pytest.raises(RenderError, match="max_steps"):
        rnn.render(net.unroll(T), max_steps=0)
    report = rnn.check_equivalence(net, 3, finite_differences=False)
    with pytest.raises(RenderError, match="T=3"):
        rnn.render(net.unroll(T), check=report)
    with pytest.raises(RenderError, match="steps=T"):
        rnn.render_side_by_side(net)


# ----------------------------------------------------------------------------- real SVG from dot
SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}"


def svg_of(dg):
    return ET.fromstring(dg.pipe(format="svg"))


def svg_groups(root, cls):
    return [g for g in root.iter(f"{SVG}g") if cls in g.get("class", "").split()]


def svg_title(g):
    return g.find(f"{SVG}title").text


@needs_dot
def test_svg_clusters_colours_and_labels():
    net = adder()
    run = adder_run(net)
    root = svg_of(rnn.render(run, acts=run.acts, grads=run.grads))
    clusters = sorted(svg_title(g) for g in svg_groups(root, "cluster") if svg_title(g).startswith("cluster_t"))
    assert clusters == sorted(f"cluster_t{t}" for t in range(T + 1))
    strokes = {}
    for g in svg_groups(root, "copy"):
        a = g.find(f".//{SVG}a")
        name = a.get(f"{XLINK}title").split(":")[0]
        strokes.setdefault(name.split("]@")[0][2:], set()).add(g.find(f".//{SVG}path").get("stroke").upper())
    assert set(strokes) == set(net.connections)
    assert all(len(s) == 1 for s in strokes.values()), strokes
    assert len({s.pop() for s in strokes.values()}) == len(net.connections)
    text = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    for t in range(1, T + 1):
        assert f"W[h->h]@t{t}" in text and f"h@t{t}" in text
    assert "t = 0 (initial states)" in text and "tied weights" in text and "clamped" in text


@needs_dot
def test_svg_elided_and_side_by_side_and_folded_loop():
    net = adder()
    root = svg_of(rnn.render(net.unroll(40)))
    assert len([g for g in svg_groups(root, "cluster") if svg_title(g).startswith("cluster_t")]) == 6
    assert any("35 steps" in (t.text or "") for t in root.iter(f"{SVG}text"))

    root = svg_of(rnn.render(net))
    loops = [g for g in svg_groups(root, "connection") if svg_title(g) == "f_h->f_h"]
    assert len(loops) == 1
    assert loops[0].find(f".//{SVG}path").get("stroke").upper() == tie_colours(net)["h->h"]
    assert "5,2" in (loops[0].find(f".//{SVG}path").get("stroke-dasharray") or "")  # dashed: a delay
    assert any("delay 1" in (t.text or "") for t in loops[0].iter(f"{SVG}text"))

    root = svg_of(rnn.render_side_by_side(net, steps=T, units=True))
    titles = {svg_title(g) for g in svg_groups(root, "cluster")}
    assert {"cluster_folded", "cluster_unrolled"} <= titles
    assert len([t for t in titles if t.startswith("cluster_t")]) == T + 1


def test_pictures_script_writes_the_four_pictures(tmp_path):
    path = Path(__file__).resolve().parents[1] / "visualizations" / "pictures.py"
    spec = importlib.util.spec_from_file_location("pictures", path)
    pictures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pictures)
    assert pictures.main(["--out", str(tmp_path), "--format", "dot"]) == 0  # DOT text: no Graphviz needed
    names = {"adder_folded", "adder_unrolled", "adder_side_by_side", "adder_units"}
    assert {p.stem for p in tmp_path.iterdir()} == names
    assert len(step_clusters((tmp_path / "adder_unrolled.dot").read_text())) == T + 1


@needs_dot
@pytest.mark.parametrize("units", [False, True])
def test_a_group_alone_in_its_step_renders(units):
    """z has no connection at all (neither feeding nor fed within a step), next to delay-0
    chains: dot's newrank failed ("trouble in init_rank") while it was also a layer's top."""
    net = rnn.RecurrentNet("alone")
    net.add_group("x", 2, role="input")
    net.add_group("c", 3, activation="tanh")
    net.add_group("d", 2)
    net.connect("c", "d")
    net.connect("d", "d", delay=1)
    net.add_group("h", 3)
    net.connect("x", "h")
    net.connect("h", "h", delay=1)
    net.connect("d", "h")
    net.add_group("z", 3, activation="softmax", role="output")
    net.add_group("k", 2, activation="tanh")
    net.connect("h", "k")
    root = svg_of(rnn.render(net.unroll(3), units=units))
    clusters = [g for g in svg_groups(root, "cluster") if svg_title(g).startswith("cluster_t")]
    assert len(clusters) == 4
