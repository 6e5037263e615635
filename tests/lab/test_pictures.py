"""The report's flow pictures, drawn from fixed data: what each server saw is written in its
box, every arrow runs from the edge of its source box to the edge of its destination, a reply
that skips pen is drawn around it, and every text is escaped."""

import xml.etree.ElementTree as ET

import pytest

from pen_lab.flow import Flow
from pen_lab.replies import Reply
from pen_lab.report import flow_chart, render

SVG = "{http://www.w3.org/2000/svg}"


def xff_flow():
    flow = Flow("with -H: pen names the client")
    flow.box("client1", "client1", 0, ["10.89.1.21"])
    flow.box("pen", "pen", 1, ["clients reach it at 10.89.1.10"])
    for name, ip in (("server1", "10.89.2.11"), ("server2", "10.89.2.12")):
        flow.box(name, name, 2, [ip], saw=["peer 10.89.2.10", "X-Forwarded-For 10.89.1.21"])
    flow.arrow("client1", "pen", "GET /")
    flow.arrow("pen", "server1", "GET /\nX-Forwarded-For: 10.89.1.21")
    flow.arrow("pen", "server2", "GET /")
    return flow


def parse(svg):
    return ET.fromstring(svg)


def boxes(root):
    out = {}
    for group in root.iter(f"{SVG}g"):
        if group.get("class") == "box":
            rect = group.find(f"{SVG}rect")
            out[group.get("data-key")] = (
                tuple(float(rect.get(k)) for k in ("x", "y", "width", "height")),
                ["".join(t.itertext()) for t in group.iter(f"{SVG}text")
                 if t.get("class") == "saw"])
    return out


def arrows(root):
    for group in root.iter(f"{SVG}g"):
        if (group.get("class") or "").startswith("arrow"):
            words = group.find(f"{SVG}path").get("d").split()
            points = [(float(words[i + 1]), float(words[i + 2]))
                      for i in range(0, len(words), 3)]
            labels = ["".join(t.itertext()) for t in group.iter(f"{SVG}text")]
            yield group.get("data-from"), group.get("data-to"), points, labels


def on_side(point, rect):
    """Is the point on the left or right edge of the rectangle?"""
    x, y = point
    rx, ry, w, h = rect
    return min(abs(x - rx), abs(x - rx - w)) < 0.2 and ry <= y <= ry + h


def crosses(a, b, rect):
    """Does the segment a-b pass through the rectangle's inside? (By its bounding box: exact
    for the axis-parallel legs of a detour, and a straight slanted line across pen fails.)"""
    rx, ry, w, h = rect
    (x1, y1), (x2, y2) = a, b
    return (min(x1, x2) < rx + w and max(x1, x2) > rx
            and min(y1, y2) < ry + h and max(y1, y2) > ry)


def test_each_server_box_says_what_that_server_saw():
    root = parse(flow_chart(xff_flow()))
    drawn = boxes(root)
    assert set(drawn) == {"client1", "pen", "server1", "server2"}
    for server in ("server1", "server2"):
        assert drawn[server][1] == ["peer 10.89.2.10", "X-Forwarded-For 10.89.1.21"]
    assert drawn["client1"][1] == []


def test_arrows_join_the_boxes_they_name_edge_to_edge():
    root = parse(flow_chart(xff_flow()))
    drawn = boxes(root)
    found = []
    for src, dst, points, labels in arrows(root):
        found.append((src, dst))
        assert on_side(points[0], drawn[src][0]), (src, points[0], drawn[src][0])
        assert on_side(points[-1], drawn[dst][0]), (dst, points[-1], drawn[dst][0])
        assert points[0][0] < points[-1][0]               # left to right, as drawn
        if dst == "server1":
            assert labels == ["GET /", "X-Forwarded-For: 10.89.1.21"]
    assert found == [("client1", "pen"), ("pen", "server1"), ("pen", "server2")]


def test_a_reply_that_skips_pen_is_drawn_around_it():
    flow = xff_flow()
    flow.arrow("server2", "client1", "server2 -> client1: 2000000 bytes", style="reply")
    root = parse(flow_chart(flow))
    drawn = boxes(root)
    (_, _, points, labels), = [a for a in arrows(root) if a[0] == "server2"]
    assert on_side(points[0], drawn["server2"][0]) and on_side(points[-1], drawn["client1"][0])
    for rect, _ in drawn.values():
        for a, b in zip(points, points[1:], strict=False):
            assert not crosses(a, b, rect), (a, b, rect)
    pen_bottom = drawn["pen"][0][1] + drawn["pen"][0][3]
    assert max(y for _, y in points) > pen_bottom
    assert labels == ["server2 -> client1: 2000000 bytes"]


def test_text_is_escaped_and_the_picture_is_well_formed():
    flow = Flow("a <caption> & more")
    flow.box("c", "<script>alert(1)</script>", 0, ["a&b"], saw=['"quoted" <tag>'])
    flow.box("p", "pen", 1)
    flow.arrow("c", "p", "x < y & z", style="refused")
    svg = flow_chart(flow)
    assert "<script" not in svg and "&lt;script&gt;" in svg
    root = parse(svg)                                     # well-formed XML
    texts = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
    assert "a <caption> & more" in texts and '"quoted" <tag>' in texts
    assert "x < y & z" in texts


def test_a_flow_refuses_arrows_it_cannot_draw():
    flow = xff_flow()
    with pytest.raises(ValueError, match="unknown box"):
        flow.arrow("client1", "nobody")
    with pytest.raises(ValueError, match="one column"):
        flow.arrow("server1", "server2")
    with pytest.raises(ValueError, match="style"):
        flow.arrow("client1", "pen", style="carrier pigeon")
    with pytest.raises(ValueError, match="twice"):
        flow.box("pen", "pen again", 1)


def test_report_draws_flows_and_keeps_the_request_timeline():
    page = render([("dns", [], []), ("transparent", [Reply(1.0, "server1")], []),
                   ("quiet", [], [])],
                  flows=[("dns", xff_flow()), ("transparent", xff_flow())])
    dns = page[page.index("<h2>dns</h2>"):page.index("<h2>transparent</h2>")]
    transparent = page[page.index("<h2>transparent</h2>"):]
    assert dns.count('class="flow"') == 1 and dns.count("<svg") == 1
    assert transparent.count('class="flow"') == 1 and transparent.count("<svg") == 2
    assert "server1 (1)" in transparent                  # the timeline's lane
    assert "<h2>quiet</h2>" not in page                  # nothing to draw, no heading
    assert "<script" not in page
