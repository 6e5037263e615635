"""A scenario's picture as data: who connected to whom, and what each box saw.

A scenario fills a Flow from what it observed (the replies, the servers' seen logs, the
counters) and hands it to story.picture(); report.flow_chart() draws any Flow. Boxes stand
in columns (clients, pen, servers, ...); arrows join boxes of different columns, and one
that skips a column (a DSR reply from a server straight to its client) is drawn around it.
"""

from dataclasses import dataclass, field

# how an arrow is drawn: what went along it
STYLES = {
    "tcp": "a TCP connection",
    "tls": "TLS",
    "udp": "UDP datagrams",
    "reply": "replies",
    "refused": "refused",
    "file": "written to disk",
}


@dataclass(frozen=True)
class Box:
    key: str
    title: str
    column: int
    lines: tuple = ()  # what the box is: addresses, ports
    saw: tuple = ()    # what it observed: the peer address, headers, bytes


@dataclass(frozen=True)
class Arrow:
    src: str
    dst: str
    label: str = ""  # "\n" breaks it into lines
    style: str = "tcp"


@dataclass
class Flow:
    caption: str
    boxes: list = field(default_factory=list)
    arrows: list = field(default_factory=list)

    def box(self, key, title, column, lines=(), saw=()):
        if self.find(key) is not None:
            raise ValueError(f"flow: box {key!r} twice")
        self.boxes.append(Box(key, title, column, tuple(lines), tuple(saw)))
        return key

    def arrow(self, src, dst, label="", style="tcp"):
        ends = self.find(src), self.find(dst)
        if None in ends:
            raise ValueError(f"flow: arrow {src!r} -> {dst!r} names an unknown box")
        if ends[0].column == ends[1].column:
            raise ValueError(f"flow: arrow {src!r} -> {dst!r} stays in one column")
        if style not in STYLES:
            raise ValueError(f"flow: unknown arrow style {style!r}")
        self.arrows.append(Arrow(src, dst, label, style))

    def find(self, key):
        return next((b for b in self.boxes if b.key == key), None)
