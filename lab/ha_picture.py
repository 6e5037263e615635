"""The HA scenarios' picture: where the VIP was, what the client got, and the outage.

One inline SVG per client loop (ha.Run): a band per pen box while it held the VIP (grey
while the box was down), a dot per answered request in the lane of the box that relayed it
(with DSR the server answers the client itself: one lane for those),
a red cross per failed one, dashed lines at the scenario's events, and the longest gap
without an answer shaded and labelled with its measured length.
"""

import html

WIDTH, LEFT, RIGHT, TOP, LANE = 900, 150, 20, 58, 26
BOX_COLORS = {"penbox1": "#1f77b4", "penbox2": "#2ca02c"}
FAILED = "#d62728"


def draw(run, events=()):
    boxes = sorted(run.spans or {})
    direct = any(r.server and box is None for r, box in zip(run.replies, run.by_box,
                                                            strict=True))
    lanes = ([("vip", box) for box in boxes] + [("relayed", box) for box in boxes]
             + [("relayed", None)] * direct + [("failed", None)])
    plot = WIDTH - LEFT - RIGHT
    height = TOP + LANE * len(lanes) + 44
    span = max(run.end - run.start, 1.0)

    def x(t):
        return LEFT + (min(max(t, run.start), run.end) - run.start) / span * plot

    def lane_y(kind, box=None):
        return TOP + LANE * lanes.index((kind, box))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{WIDTH}" height="{height}" fill="white"/>']
    if getattr(run, "title", None):
        parts.append(f'<text x="4" y="16" font-weight="bold">{html.escape(run.title)}</text>')
    gap, since, until = run.gap or (0.0, run.start, run.start)
    if gap > 0:
        parts.append(f'<rect x="{x(since):.1f}" y="{TOP - 4}" width="{max(x(until) - x(since), 1):.1f}" '
                     f'height="{LANE * len(lanes) + 8}" fill="{FAILED}" fill-opacity="0.12"/>')
        bound = f" (bound {run.bound:g} s)" if run.bound is not None else ""
        mid = (x(since) + x(until)) / 2
        anchor = "end" if mid > LEFT + plot * 0.75 else "start" if mid < LEFT + plot * 0.25 \
            else "middle"
        parts.append(f'<text x="{mid:.1f}" y="{TOP + LANE * len(lanes) + 18}" '
                     f'text-anchor="{anchor}" fill="{FAILED}" font-weight="bold">outage '
                     f'{gap:.2f} s{bound}</text>')
    for kind, box in lanes:
        y = lane_y(kind, box)
        label = {"vip": f"VIP on {box}", "relayed": f"via {box}" if box else "answered (DSR)",
                 "failed": "failed requests"}[kind]
        parts.append(f'<text x="4" y="{y + LANE / 2 + 4:.0f}">{html.escape(label)}</text>')
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot}" y1="{y + LANE / 2:.0f}" '
                     f'y2="{y + LANE / 2:.0f}" stroke="#eee"/>')
    for box in boxes:
        y = lane_y("vip", box)
        color = BOX_COLORS.get(box, "#9467bd")
        for a, b in run.spans[box]:
            parts.append(f'<rect x="{x(a):.1f}" y="{y + 5}" width="{max(x(b) - x(a), 1):.1f}" '
                         f'height="{LANE - 10}" fill="{color}" fill-opacity="0.7">'
                         f'<title>{html.escape(box)} held the VIP {a - run.start:.2f}-'
                         f'{b - run.start:.2f} s</title></rect>')
        for a, b in getattr(run, "dead", {}).get(box, []):
            parts.append(f'<rect x="{x(a):.1f}" y="{y + 11}" width="{max(x(b) - x(a), 1):.1f}" '
                         f'height="{LANE - 22}" fill="#999"><title>{html.escape(box)} down'
                         f'</title></rect>')
    for reply, box in zip(run.replies, run.by_box, strict=True):
        t = f"{reply.t - run.start:.2f}s"
        if reply.server is None:
            y = lane_y("failed") + LANE / 2
            tip = html.escape(f"{t} {reply.client or ''}: {reply.error or 'failed'}")
            parts.append(f'<path d="M{x(reply.t) - 3:.1f},{y - 3:.0f} l6,6 m0,-6 l-6,6" '
                         f'stroke="{FAILED}" stroke-width="1.5"><title>{tip}</title></path>')
        else:      # a box that relayed it, or (DSR) the server answered the client itself
            box = box if box in boxes else None
            y = lane_y("relayed", box) + LANE / 2
            tip = html.escape(f"{t} {reply.client or ''} -> {box} -> {reply.server}")
            parts.append(f'<circle cx="{x(reply.t):.1f}" cy="{y:.0f}" r="2.5" '
                         f'fill="{BOX_COLORS.get(box, "#9467bd")}"><title>{tip}</title></circle>')
    shown = [(t, text) for t, text in events if run.start <= t <= run.end]
    for i, (t, text) in enumerate(shown):
        label_y = TOP - 10 - 16 * (i % 2)
        anchor = 'text-anchor="end" ' if x(t) > LEFT + plot / 2 else ""
        nudge = -3 if anchor else 3
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{label_y + 2}" '
                     f'y2="{TOP + LANE * len(lanes)}" stroke="{FAILED}" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{x(t) + nudge:.1f}" y="{label_y}" {anchor}fill="{FAILED}">'
                     f'{html.escape(text)}</text>')
    axis_y = height - 8
    step = 1 if span <= 12 else 2 if span <= 24 else 5
    for second in range(0, int(span) + 1, step):
        tx = LEFT + second / span * plot
        parts.append(f'<text x="{tx:.1f}" y="{axis_y}" text-anchor="middle" fill="#666">'
                     f'{second}s</text>')
    parts.append("</svg>")
    return "\n".join(parts)
