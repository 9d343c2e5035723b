"""figures.py: every chart is well-formed XML; points, bars and error bars land on the pixels that the plot
area's margins predict (computed here from the margin constants, not from the module's own mapping); one
line per series with one vertex per point; the legend names each series; text is escaped; ticks are round
numbers; and empty or NaN data fail with an error that names the series."""

import math
import xml.etree.ElementTree as ET

import pytest

import figures

SVG = "{http://www.w3.org/2000/svg}"
WIDTH, HEIGHT = 640, 360
# The plot area, from the documented margins: the independent side of every pixel check below.
LEFT, RIGHT = figures.MARGIN_LEFT, WIDTH - figures.MARGIN_RIGHT
TOP, BOTTOM = figures.MARGIN_TOP, HEIGHT - figures.MARGIN_BOTTOM


def vertices(polyline) -> list[tuple[float, float]]:
    """The (x, y) pixel pairs of a polyline's points attribute."""
    return [tuple(float(v) for v in pair.split(",")) for pair in polyline.get("points").split()]


def texts(root) -> list[str]:
    """Every piece of text in the figure, unescaped by the XML parser."""
    return [element.text for element in root.iter(SVG + "text")]


def test_a_line_chart_is_a_well_formed_svg_document():
    root = ET.fromstring(figures.line_chart({"loss": [(0, 3.0), (10, 2.0)]}, "Loss", "step", "loss"))
    assert root.tag == SVG + "svg"
    assert (root.get("width"), root.get("height")) == (str(WIDTH), str(HEIGHT))


def test_a_point_lands_on_the_pixel_the_plot_area_geometry_predicts():
    # x runs 0..10 (its nice ticks are 0, 2, ..., 10) and y is fixed to 0..1, so the axes span exactly that.
    points = [(0, 0.0), (2.5, 0.25), (7, 0.9), (10, 1.0)]
    root = ET.fromstring(figures.line_chart({"accuracy": points}, "A", "x", "y", y_range=(0, 1)))
    (line,) = root.iter(SVG + "polyline")
    for (x, y), (px, py) in zip(points, vertices(line)):
        assert px == pytest.approx(LEFT + x / 10 * (RIGHT - LEFT), abs=0.01)
        assert py == pytest.approx(BOTTOM - y * (BOTTOM - TOP), abs=0.01)  # pixel y grows downwards


def test_a_log_x_axis_spaces_decades_evenly_between_the_plot_edges():
    points = [(10, 0.5), (100, 0.5), (1000, 0.5), (10**1.5, 0.5)]
    root = ET.fromstring(figures.line_chart({"p": points}, "A", "tokens", "p", y_range=(0, 1), log_x=True))
    xs = [px for px, _ in vertices(next(root.iter(SVG + "polyline")))]
    assert xs[0] == pytest.approx(LEFT, abs=0.01) and xs[2] == pytest.approx(RIGHT, abs=0.01)
    assert xs[1] == pytest.approx((LEFT + RIGHT) / 2, abs=0.01)
    assert xs[3] == pytest.approx(LEFT + (RIGHT - LEFT) / 4, abs=0.01)  # 10^1.5 is a quarter of two decades


def test_each_series_gets_one_polyline_with_one_vertex_per_point_and_its_own_colour():
    series = {"pretrain": [(i, 1 / (i + 1)) for i in range(7)], "sft": [(0, 0.5), (3, 0.2)], "dpo": [(5, 0.1)]}
    root = ET.fromstring(figures.line_chart(series, "Loss", "step", "loss"))
    lines = list(root.iter(SVG + "polyline"))
    assert [line.get("data-series") for line in lines] == list(series)
    assert [len(vertices(line)) for line in lines] == [len(points) for points in series.values()]
    assert len({line.get("stroke") for line in lines}) == 3
    assert all(line.get("stroke") in figures.PALETTE for line in lines)


def test_a_series_of_one_point_is_also_drawn_as_a_dot_in_its_colour():
    root = ET.fromstring(figures.line_chart({"sft": [(0, 0.5), (10, 0.7)], "dpo": [(5, 0.25)]}, "A", "x", "y",
                                            y_range=(0, 1)))
    (dot,) = [c for c in root.iter(SVG + "circle") if c.get("class") == "point"]
    assert float(dot.get("cx")) == pytest.approx(LEFT + 0.5 * (RIGHT - LEFT), abs=0.01)
    assert float(dot.get("cy")) == pytest.approx(BOTTOM - 0.25 * (BOTTOM - TOP), abs=0.01)
    assert dot.get("fill") == figures.PALETTE[1]


def test_the_legend_names_every_series():
    series = {"held-out": [(0, 0.1), (1, 0.2)], "MATH": [(0, 0.3), (1, 0.4)]}
    root = ET.fromstring(figures.line_chart(series, "Accuracy", "stage", "accuracy"))
    (legend,) = [g for g in root.iter(SVG + "g") if g.get("class") == "legend"]
    assert [element.text for element in legend.iter(SVG + "text")] == list(series)


def test_labels_with_markup_characters_are_escaped_and_read_back_unchanged():
    title, name, label = 'p < 0.05 & "pivotal"', "<script>alert(1)</script>", "a&b"
    svg = figures.line_chart({name: [(0, 1.0), (1, 2.0)]}, title, "x < y", "y > x", markers=[(0, 1.0, label)])
    root = ET.fromstring(svg)  # raw < or & would make this raise
    assert "<script>" not in svg
    assert {title, name, label, "x < y", "y > x"} <= set(texts(root))
    assert next(root.iter(SVG + "polyline")).get("data-series") == name


@pytest.mark.parametrize("low, high, expected", [
    (0, 1, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (0, 37, [0, 10, 20, 30, 40]),
    (-3, 3, [-4, -2, 0, 2, 4]),
    (0.013, 0.048, [0.01, 0.02, 0.03, 0.04, 0.05]),
    (1.7, 3.2, [1.5, 2.0, 2.5, 3.0, 3.5]),
    (0, 2e9, [0, 5e8, 1e9, 1.5e9, 2e9]),
])
def test_nice_ticks_are_round_numbers_that_cover_the_range(low, high, expected):
    # Exact equality: a tick of 0.6000000000000001 would print as such in a label.
    assert figures.nice_ticks(low, high) == expected


def test_tick_labels_are_compact():
    assert [figures.number(v) for v in (0.0, 0.2, 3 * 0.2, 5.0, 1500, 2e6, 1.5e9, 1e-05)] == \
        ["0", "0.2", "0.6", "5", "1.5k", "2M", "1.5B", "1e-05"]


def test_markers_are_labelled_circles_at_their_data_coordinates():
    svg = figures.line_chart({"p(success)": [(0, 0.2), (10, 0.9)]}, "PTS", "token", "p", y_range=(0, 1),
                             markers=[(4, 0.6, "pivot: 'so'")])
    root = ET.fromstring(svg)
    (circle,) = [c for c in root.iter(SVG + "circle") if c.get("class") == "marker"]
    assert float(circle.get("cx")) == pytest.approx(LEFT + 0.4 * (RIGHT - LEFT), abs=0.01)
    assert float(circle.get("cy")) == pytest.approx(BOTTOM - 0.6 * (BOTTOM - TOP), abs=0.01)
    assert "pivot: 'so'" in texts(root)


@pytest.mark.parametrize("bad", [[], [(0, 1.0), (1, math.nan)], [(math.inf, 1.0)]])
def test_an_empty_series_or_a_nan_in_a_line_chart_raises_an_error_naming_the_series(bad):
    with pytest.raises(ValueError, match="'broken run'"):
        figures.line_chart({"fine": [(0, 1.0)], "broken run": bad}, "t", "x", "y")


@pytest.mark.parametrize("bad", [[], [0.5, math.nan], [math.inf]])
def test_an_empty_series_or_a_nan_in_a_bar_chart_raises_an_error_naming_the_series(bad):
    groups = [f"stage {i}" for i in range(max(1, len(bad)))]
    with pytest.raises(ValueError, match="'broken run'"):
        figures.bar_chart(groups, {"fine": [0.1] * len(groups), "broken run": bad}, "t", "y")


def test_bars_rise_from_zero_to_their_value_on_the_predicted_pixels():
    groups, values = ["pretrain", "sft", "dpo"], [0.25, 0.5, 0.75]
    root = ET.fromstring(figures.bar_chart(groups, {"held-out": values}, "Accuracy", "accuracy", y_range=(0, 1)))
    bars = [r for r in root.iter(SVG + "rect") if r.get("class") == "bar"]
    assert len(bars) == len(groups)
    slot = (RIGHT - LEFT) / len(groups)
    for g, (bar, value) in enumerate(zip(bars, values)):
        assert float(bar.get("y")) == pytest.approx(BOTTOM - value * (BOTTOM - TOP), abs=0.01)
        assert float(bar.get("y")) + float(bar.get("height")) == pytest.approx(BOTTOM, abs=0.02)
        left = float(bar.get("x"))
        assert LEFT + g * slot <= left and left + float(bar.get("width")) <= LEFT + (g + 1) * slot + 0.01
    assert [t for t in texts(root) if t in groups] == groups


def test_grouped_bars_draw_one_bar_per_group_and_series_with_error_bars_spanning_lo_to_hi():
    series = {"held-out": [0.3, 0.6], "MATH": [0.1, 0.2], "MGSM": [0.05, 0.15]}
    errors = {"held-out": [(0.2, 0.4), (0.5, 0.7)]}
    root = ET.fromstring(figures.bar_chart(["sft", "dpo"], series, "Acc", "accuracy", errors=errors, y_range=(0, 1)))
    bars = [r for r in root.iter(SVG + "rect") if r.get("class") == "bar"]
    assert len(bars) == 2 * 3
    paths = [p for p in root.iter(SVG + "path") if p.get("class") == "error"]
    assert len(paths) == 2
    for path, (lo, hi) in zip(paths, errors["held-out"]):
        # d = "Mx,y(lo) Vy(hi) ...": the vertical stroke from the lower limit up to the upper one.
        start, vertical = path.get("d").split()[:2]
        assert float(start.split(",")[1]) == pytest.approx(BOTTOM - lo * (BOTTOM - TOP), abs=0.01)
        assert float(vertical[1:]) == pytest.approx(BOTTOM - hi * (BOTTOM - TOP), abs=0.01)



def test_a_chart_without_series_a_reversed_y_range_or_x_0_on_a_log_axis_is_refused():
    with pytest.raises(ValueError, match="line_chart needs at least one series"):
        figures.line_chart({}, "t", "x", "y")
    with pytest.raises(ValueError, match="bar_chart needs at least one group and one series"):
        figures.bar_chart(["sft"], {}, "t", "y")
    with pytest.raises(ValueError, match="bar_chart needs at least one group and one series"):
        figures.bar_chart([], {"MATH": []}, "t", "y")
    with pytest.raises(ValueError, match=r"y_range must run from low to high, got \(1, 0\)"):
        figures.line_chart({"run": [(0, 0.5)]}, "t", "x", "y", y_range=(1, 0))
    with pytest.raises(ValueError, match="series 'run' has x <= 0, which a log x axis cannot show"):
        figures.line_chart({"run": [(0, 0.5), (10, 0.7)]}, "t", "x", "y", log_x=True)

def test_a_bar_chart_refuses_series_or_errors_whose_length_differs_from_the_groups():
    with pytest.raises(ValueError, match="'MATH' has 1 values for 2 groups"):
        figures.bar_chart(["sft", "dpo"], {"MATH": [0.1]}, "t", "y")
    with pytest.raises(ValueError, match="'MATH'"):
        figures.bar_chart(["sft", "dpo"], {"MATH": [0.1, 0.2]}, "t", "y", errors={"MATH": [(0, 0.2)]})
