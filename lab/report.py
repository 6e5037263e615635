"""A self-contained HTML report: what each scenario showed, as pictures. Inline SVG, no scripts.

Two kinds of picture: a request timeline (chart: a lane per server and one for failed
requests, a dot per request, a labelled vertical line where a server died or came back), and
a flow (flow_chart: boxes for clients, pen and servers, arrows for who connected to whom,
and under each server what it saw; lab/flow.py holds the data a scenario records).
"""

import html
from itertools import pairwise

from pen_lab.flow import STYLES

WIDTH, LANE, LEFT, TOP = 900, 28, 110, 44
COLORS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#bcbd22", "#e377c2"]


def chart(replies, events):
    names = sorted({r.server for r in replies if r.server})
    lanes = names + ["FAILED"]
    times = [r.t for r in replies] + [t for t, _ in events]
    start, end = min(times), max(times)
    span = max(end - start, 1.0)
    height = TOP + LANE * len(lanes) + 40
    plot = WIDTH - LEFT - 20

    def x(t):
        return LEFT + (t - start) / span * plot

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{WIDTH}" height="{height}" fill="white"/>']
    for i, lane in enumerate(lanes):
        y = TOP + LANE * i + LANE / 2
        count = sum(1 for r in replies if (r.server or "FAILED") == lane)
        parts.append(f'<text x="4" y="{y + 4:.0f}">{html.escape(lane)} ({count})</text>')
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot}" y1="{y:.0f}" y2="{y:.0f}" '
                     f'stroke="#ddd"/>')
    for r in replies:
        lane = lanes.index(r.server or "FAILED")
        color = "#d62728" if r.server is None else COLORS[lane % len(COLORS)]
        title = html.escape(f"{r.t - start:.2f}s {r.client or ''} -> {r.server or r.error}")
        parts.append(f'<circle cx="{x(r.t):.1f}" cy="{TOP + LANE * lane + LANE / 2:.0f}" r="4" '
                     f'fill="{color}"><title>{title}</title></circle>')
    for i, (t, text) in enumerate(events):
        label_y = TOP - 8 - 16 * (i % 2)  # alternate rows so close events stay readable
        anchor = 'text-anchor="end" ' if x(t) > LEFT + plot / 2 else ""
        nudge = -3 if anchor else 3
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{label_y + 2}" '
                     f'y2="{height - 30}" stroke="#d62728" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{x(t) + nudge:.1f}" y="{label_y}" {anchor}fill="#d62728">'
                     f'{html.escape(text.split(" (")[0])}<title>{html.escape(text)}</title>'
                     f'</text>')
    parts.append(f'<text x="{LEFT}" y="{height - 10}">0 s</text>')
    parts.append(f'<text x="{LEFT + plot - 40}" y="{height - 10}">{span:.1f} s</text>')
    parts.append("</svg>")
    return "\n".join(parts)


# -- flow pictures -------------------------------------------------------------------

CHAR_W, LINE_H, TITLE_H, PAD, V_GAP, MARGIN, LANE_GAP = 6.4, 15, 20, 8, 22, 16, 11
MAX_WIDTH = 940
ARROW_COLORS = {"tcp": "#1f77b4", "tls": "#2ca02c", "udp": "#ff7f0e", "reply": "#666",
                "refused": "#d62728", "file": "#8c564b"}
DASHES = {"udp": "7 4", "reply": "3 3", "refused": "5 3", "file": "1 3"}
STROKE_WIDTHS = {"tls": 3}


def _text_width(text, char_w=CHAR_W):
    return len(text) * char_w


def _label_lines(arrow):
    return arrow.label.split("\n") if arrow.label else []


def _layout(flow):
    """Box rectangles {key: (x, y, w, h)}, side anchors, and the picture's size."""
    columns = sorted({b.column for b in flow.boxes})
    col = {c: i for i, c in enumerate(columns)}

    def skips(arrow):  # does it pass a column by? (then it is drawn around it)
        return abs(col[flow.find(arrow.src).column] - col[flow.find(arrow.dst).column]) > 1

    sides = {}  # (box key, "l"/"r") -> arrows attached there, in order

    def side(box, other):
        return "r" if col[other.column] > col[box.column] else "l"

    for arrow in flow.arrows:
        src, dst = flow.find(arrow.src), flow.find(arrow.dst)
        sides.setdefault((src.key, side(src, dst)), []).append(arrow)
        sides.setdefault((dst.key, side(dst, src)), []).append(arrow)
    spacing = {k: max([14 * len(_label_lines(a)) + 8 for a in v] + [20])
               for k, v in sides.items()}
    width = {c: max(150, *(min(300, _text_width(t) + 16) for b in flow.boxes
                           if b.column == c for t in (b.title, *b.lines, *b.saw)))
             for c in columns}
    gaps = []
    for left, right in pairwise(columns):
        labels = [_text_width(line) for a in flow.arrows if not skips(a)
                  for line in _label_lines(a)
                  if {flow.find(a.src).column, flow.find(a.dst).column} == {left, right}]
        gaps.append(max(110, min(360, max(labels, default=0) + 50)))
    x, xs = MARGIN, {}
    for i, c in enumerate(columns):
        xs[c] = x
        x += width[c] + (gaps[i] if i < len(gaps) else 0)
    heights = {}
    for b in flow.boxes:
        text_h = TITLE_H + LINE_H * (len(b.lines) + len(b.saw)) + PAD + (4 if b.saw else 0)
        attached = max([len(sides.get((b.key, s), [])) * spacing.get((b.key, s), 20) + 10
                        for s in "lr"])
        heights[b.key] = max(text_h, attached)
    column_h = {c: sum(heights[b.key] + V_GAP for b in flow.boxes if b.column == c) - V_GAP
                for c in columns}
    tallest = max(column_h.values())
    top = 34
    rects, y_next = {}, {c: top + (tallest - column_h[c]) / 2 for c in columns}
    for b in flow.boxes:
        rects[b.key] = (xs[b.column], y_next[b.column], width[b.column], heights[b.key])
        y_next[b.column] += heights[b.key] + V_GAP
    anchors = {}
    for (key, where), arrows in sides.items():
        bx, by, bw, bh = rects[key]

        def other_y(arrow, key=key):
            other = arrow.dst if arrow.src == key else arrow.src
            return (skips(arrow), rects[other][1])  # detours leave from the bottom
        ordered = sorted(arrows, key=other_y)
        step = bh / (len(ordered) + 1)
        for i, arrow in enumerate(ordered, 1):
            anchors[(id(arrow), key)] = (bx + (bw if where == "r" else 0), by + step * i)
    return col, skips, rects, anchors, x, top + tallest


def _head(x, y, dx, dy, color):
    """An arrowhead at (x, y) pointing along (dx, dy)."""
    norm = max((dx * dx + dy * dy) ** 0.5, 1e-9)
    ux, uy = dx / norm, dy / norm
    back_x, back_y = x - 9 * ux, y - 9 * uy
    return (f'<polygon points="{x:.1f},{y:.1f} {back_x - 4 * uy:.1f},{back_y + 4 * ux:.1f} '
            f'{back_x + 4 * uy:.1f},{back_y - 4 * ux:.1f}" fill="{color}"/>')


def _label(x, y, lines, color):
    """Centered text on a white ground, so that lines behind it stay readable."""
    if not lines:
        return ""
    w = max(_text_width(line, 6.1) for line in lines) + 8
    h = 14 * len(lines) + 2
    out = [f'<rect x="{x - w / 2:.1f}" y="{y - h / 2:.1f}" width="{w:.1f}" height="{h}" '
           f'fill="white" fill-opacity="0.9"/>']
    for i, line in enumerate(lines):
        ty = y - h / 2 + 12 + 14 * i
        out.append(f'<text x="{x:.1f}" y="{ty:.1f}" text-anchor="middle" fill="{color}" '
                   f'font-size="11">{html.escape(line)}</text>')
    return "".join(out)


def flow_chart(flow):
    """One flow picture as inline SVG: boxes, arrows (a group each, data-from/data-to name
    the boxes they join), the lines each box saw, and a legend of the arrow kinds used."""
    col, skips, rects, anchors, width, bottom = _layout(flow)
    detours = [a for a in flow.arrows if skips(a)]
    legend_y = bottom + 30 + 20 * len(detours) + (20 if detours else 0)
    height = legend_y + 16
    width = max(width, 420) + MARGIN
    shown = min(width, MAX_WIDTH)  # a wider picture is scaled down to fit the page
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="flow" width="{shown:.0f}" '
             f'height="{height * shown / width:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>',
             f'<text x="{MARGIN}" y="20" font-weight="bold">{html.escape(flow.caption)}</text>']
    for box in flow.boxes:
        x, y, w, h = rects[box.key]
        parts.append(f'<g class="box" data-key="{html.escape(box.key)}">'
                     f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="6" '
                     f'fill="#f7f7f7" stroke="#555"/>'
                     f'<text x="{x + 8:.1f}" y="{y + 15:.1f}" font-weight="bold">'
                     f'{html.escape(box.title)}</text>')
        ty = y + TITLE_H
        for line in box.lines:
            ty += LINE_H
            parts.append(f'<text x="{x + 8:.1f}" y="{ty - 3:.1f}" fill="#333">'
                         f'{html.escape(line)}</text>')
        if box.saw:  # a rule between what the box is and what it saw
            parts.append(f'<line x1="{x + 6:.1f}" x2="{x + w - 6:.1f}" y1="{ty + 1:.1f}" '
                         f'y2="{ty + 1:.1f}" stroke="#bbb"/>')
            ty += 4
        for line in box.saw:
            ty += LINE_H
            parts.append(f'<text class="saw" x="{x + 8:.1f}" y="{ty - 3:.1f}" fill="#a0522d">'
                         f'{html.escape(line)}</text>')
        parts.append("</g>")
    for arrow in flow.arrows:
        parts.append(_arrow(flow, arrow, col, rects, anchors, detours, bottom))
    x = MARGIN
    for style in dict.fromkeys(a.style for a in flow.arrows):
        color = ARROW_COLORS[style]
        dash = f' stroke-dasharray="{DASHES[style]}"' if style in DASHES else ""
        parts.append(f'<line x1="{x}" x2="{x + 26}" y1="{legend_y - 4}" y2="{legend_y - 4}" '
                     f'stroke="{color}" stroke-width="{STROKE_WIDTHS.get(style, 1.6)}"{dash}/>'
                     f'<text x="{x + 32}" y="{legend_y}" fill="#333">'
                     f'{html.escape(STYLES[style])}</text>')
        x += 44 + _text_width(STYLES[style])
    parts.append("</svg>")
    return "\n".join(parts)


def _arrow(flow, arrow, col, rects, anchors, detours, bottom):
    color = ARROW_COLORS[arrow.style]
    dash = f' stroke-dasharray="{DASHES[arrow.style]}"' if arrow.style in DASHES else ""
    x1, y1 = anchors[(id(arrow), arrow.src)]
    x2, y2 = anchors[(id(arrow), arrow.dst)]
    if arrow in detours:
        # around the columns between: out sideways, down below every box, along, up, in
        lane = detours.index(arrow)
        out_x = x1 + (LANE_GAP * (lane + 1) if x2 > x1 else -LANE_GAP * (lane + 1))
        in_x = x2 + (-LANE_GAP * (lane + 1) if x2 > x1 else LANE_GAP * (lane + 1))
        low = bottom + 20 + 20 * lane
        points = [(x1, y1), (out_x, y1), (out_x, low), (in_x, low), (in_x, y2), (x2, y2)]
        label_at = ((out_x + in_x) / 2, low)
    else:
        points = [(x1, y1), (x2, y2)]
        label_at = ((x1 + x2) / 2, (y1 + y2) / 2)
    path = " ".join(f"{'M' if i == 0 else 'L'} {px:.1f} {py:.1f}"
                    for i, (px, py) in enumerate(points))
    (px, py), (ex, ey) = points[-2], points[-1]
    out = [f'<g class="arrow {arrow.style}" data-from="{html.escape(arrow.src)}" '
           f'data-to="{html.escape(arrow.dst)}">',
           f'<path d="{path}" fill="none" stroke="{color}" '
           f'stroke-width="{STROKE_WIDTHS.get(arrow.style, 1.6)}"{dash}/>',
           _head(ex, ey, ex - px, ey - py, color)]
    if arrow.style == "refused":
        out.append(f'<text x="{ex - (14 if ex > px else -4):.1f}" y="{ey - 6:.1f}" '
                   f'fill="{color}" font-size="16" font-weight="bold">\u2717</text>')
    out.append(_label(*label_at, _label_lines(arrow), color))
    out.append("</g>")
    return "".join(out)


def pictures(name, replies, events, flows, ha_runs=()):
    """The pictures one scenario gets in the report: its flows, then its request timeline
    (an HA scenario's: where the VIP was and the outage, per client loop)."""
    drawn = [flow_chart(flow) for flow in flows]
    if ha_runs:
        from pen_lab.ha_picture import draw
        drawn += [draw(run, events) for run in ha_runs]
    elif replies:
        drawn.append(chart(replies, events))
    return drawn


def render(timelines, title="pen-lab demo", flows=(), ha_runs=None):
    """timelines: (scenario, replies, events); flows: (scenario, Flow) as Story keeps them;
    ha_runs: {scenario: [ha.Run]}."""
    body = [f"<h1>{html.escape(title)}</h1>",
            "<p>Boxes and arrows show who connected to whom, and under each server (in brown) "
            "what it saw. In a timeline each dot is one client request, placed in the lane of "
            "the server that answered it (hover for details); dashed red lines mark servers "
            "breaking and coming back.</p>"]
    for name, replies, events in timelines:
        drawn = pictures(name, replies, events, [f for n, f in flows if n == name],
                         (ha_runs or {}).get(name, ()))
        if not drawn:
            continue
        body.append(f"<h2>{html.escape(name)}</h2>")
        body += drawn
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}svg{border:1px solid #eee;"
            "display:block;margin-bottom:1em}</style>"
            "</head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write(path, timelines, title="pen-lab demo", flows=(), ha_runs=None):
    with open(path, "w") as out:
        out.write(render(timelines, title, flows, ha_runs))
