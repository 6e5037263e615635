"""Narration for a learner, and the timeline the HTML report draws."""

import time


class Story:
    def __init__(self, out=print):
        self.out = out
        self.scenario = None
        self.timelines = []  # (scenario, replies, events) for the report
        self.flows = []      # (scenario, Flow): its pictures of who talked to whom
        self.ha_runs = {}    # scenario -> its HA client loops (ha.Run), for their picture

    def begin(self, name, title):
        self.scenario = name
        self.timelines.append((name, [], []))
        self.out(f"\n=== {name}: {title} ===")

    def say(self, text):
        self.out(f"  {text}")

    def command(self, where, argv_text):
        self.out(f"  [{where}]$ {argv_text}")

    def show(self, text, indent="      "):
        for line in text.rstrip().splitlines() or ["(nothing)"]:
            self.out(indent + line)

    def replies(self, who, replies):
        """One line per client: which server answered each request, in order."""
        self.timelines[-1][1].extend(replies)
        answers = [r.server or "FAILED" for r in replies]
        self.out(f"      {who}: {' '.join(answers)}")

    def picture(self, flow):
        """A picture of what the scenario observed (a pen_lab.flow.Flow), for the report."""
        self.flows.append((self.scenario, flow))

    def event(self, text):
        self.timelines[-1][2].append((time.time(), text))
        self.out(f"  >>> {text}")


def check(condition, message):
    """A scenario's assertion: fails with a sentence a learner can read."""
    if not condition:
        raise AssertionError(message)
