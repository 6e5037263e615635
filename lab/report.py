"""A self-contained HTML report: which server answered each request, over time.

One chart per scenario: a lane per server (and one for failed requests), a dot per request,
and a labelled vertical line where a server died or came back. Inline SVG, no scripts.
"""

import html

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


def render(timelines, title="pen-lab demo", pictures=None):
    body = [f"<h1>{html.escape(title)}</h1>",
            "<p>Each dot is one client request, placed in the lane of the server that "
            "answered it (hover for details). Dashed red lines mark servers breaking and "
            "coming back.</p>"]
    for name, replies, events in timelines:
        if not replies:
            continue
        body.append(f"<h2>{html.escape(name)}</h2>")
        if name in (pictures or {}):   # the HA scenarios: where the VIP was, the outage
            from pen_lab.ha_picture import draw
            body += [draw(run, events) for run in pictures[name]]
        else:
            body.append(chart(replies, events))
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}svg{border:1px solid #eee}</style>"
            "</head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write(path, timelines, title="pen-lab demo", pictures=None):
    with open(path, "w") as out:
        out.write(render(timelines, title, pictures))
