"""pen-lab: build, run and narrate the lab.  `pen-lab demo --local` needs neither docker nor root."""

import argparse
import sys
import time

from pen_lab.errors import LabError
from pen_lab.pencmd import check_kind
from pen_lab.scenarios import HA_TOUR, LOCAL_TOUR, SCENARIOS, TOUR, run_scenario
from pen_lab.story import Story


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="pen-lab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, help_text, pen=False, images=False):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if pen:
            sub.add_argument("--pen", default="py", help="balancer: py (ours, default) or c")
        if images:
            sub.add_argument("--source", help="pen-lb source tree to build from [cwd]")
            sub.add_argument("--base", help="use this local image as the Debian base")
        return sub

    command("build", "build the lab images (offline; cached by source hash)", images=True)
    up = command("up", "create the lab's networks and containers", images=True)
    up.add_argument("--topology", default="classic")
    command("status", "show the lab's networks and containers")
    down = command("down", "remove the lab's containers and networks (label pen-lab=1)")
    down.add_argument("--images", action="store_true", help="also remove the lab's images")
    command("list", "list the scenarios")
    scenario = command("scenario", "run one scenario and narrate it", pen=True, images=True)
    scenario.add_argument("name")
    scenario.add_argument("--local", action="store_true", help="on loopback, without docker")
    demo = command("demo", "run the tour of scenarios", pen=True, images=True)
    demo.add_argument("--local", action="store_true", help="on loopback, without docker")
    demo.add_argument("--report", metavar="FILE.html", help="also write an HTML timeline")
    demo.add_argument("--topology", choices=["classic", "ha"], default=None,
                      help="the tour to run: classic, or the HA pair's scenarios "
                      "[the running lab's, else classic]")
    return parser.parse_args(argv)


NO_DOCKER_SDK = ("the docker lab needs its extra: pip install 'pen-lb[lab]' (and a docker "
                 "engine); `pen-lab demo --local` needs neither")


def docker_lab_module():
    """pen_lab.docker_lab, or one line saying what to install when the docker SDK is missing."""
    try:
        from pen_lab import docker_lab
    except ModuleNotFoundError as e:
        if e.name != "docker":
            raise
        raise LabError(NO_DOCKER_SDK) from None
    return docker_lab


def run_on_lab(args, names, story):
    """Run scenarios on the local lab, or on docker (bringing the lab up if it is down)."""
    if args.local:
        from pen_lab.local_lab import LocalLab
        lab = LocalLab(args.pen, story.say)
        try:
            for name in names:
                run_scenario(name, lab, story)
        finally:
            lab.close()
        return
    docker_lab = docker_lab_module()
    engine = docker_lab.connect()
    running = docker_lab.topology_of(engine)
    started = running is None
    groups = []                 # consecutive scenarios that need the same topology
    for name in names:
        topology = SCENARIOS[name].topology
        if groups and groups[-1][0] == topology:
            groups[-1][1].append(name)
        else:
            groups.append((topology, [name]))
    try:
        for topology, group in groups:
            if running == topology:
                lab = docker_lab.open_lab(engine, args.pen, story.say)
            elif running is None or started:
                story.out(f"bringing the lab up ({topology} topology) for this run")
                lab = docker_lab.up(engine, story.say, topology=topology, pen=args.pen,
                                    source=args.source, base=args.base)
                running, started = topology, True
            else:
                raise LabError(f"scenario {group[0]} needs the {topology} lab, but the lab is "
                               f"up as {running}: `pen-lab down` first (or `pen-lab up "
                               f"--topology {topology}`)")
            for name in group:
                run_scenario(name, lab, story)
    finally:
        if started:
            docker_lab.down(engine, lambda _: None)


def demo_tour(args):
    """The classic tour, or the HA one with --topology ha or when the HA lab is up."""
    topology = args.topology
    if topology is None:
        docker_lab = docker_lab_module()
        topology = docker_lab.topology_of(docker_lab.connect()) or "classic"
    return HA_TOUR if topology == "ha" else TOUR


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    story = Story()
    try:
        if hasattr(args, "pen"):
            check_kind(args.pen)
        if args.command == "list":
            for scenario in SCENARIOS.values():
                where = f"docker {scenario.topology}" + (", local" if scenario.local else "")
                print(f"{scenario.name:20} {scenario.title}  [{where}]")
        elif args.command == "scenario":
            scenario = SCENARIOS.get(args.name)
            if scenario is None:
                raise LabError(f"scenario: unknown {args.name!r} (see `pen-lab list`)")
            if args.local and not scenario.local:
                raise LabError(f"scenario {args.name!r} needs docker (drop --local)")
            run_on_lab(args, [args.name], story)
        elif args.command == "demo":
            began = time.monotonic()
            try:
                run_on_lab(args, LOCAL_TOUR if args.local else demo_tour(args), story)
                print(f"\ndemo done in {time.monotonic() - began:.1f}s")
            finally:            # a failed tour's report shows what happened up to the failure
                if args.report and story.timelines:
                    from pen_lab import report
                    report.write(args.report, story.timelines, flows=story.flows,
                                 ha_runs=story.ha_runs)
                    print(f"report written to {args.report}")
        else:
            docker_lab = docker_lab_module()
            from pen_lab import images
            engine = docker_lab.connect()
            if args.command == "build":
                began = time.monotonic()
                tag = images.ensure_image(engine, print, source=args.source, base=args.base)
                print(f"{tag} ready in {time.monotonic() - began:.1f}s")
            elif args.command == "up":
                docker_lab.up(engine, print, topology=args.topology, source=args.source,
                              base=args.base)
                first = "ha-kill-box" if args.topology == "ha" else "tracking"
                print(f"the lab is up: try `pen-lab status`, `pen-lab scenario {first}`, "
                      "then `pen-lab down`")
            elif args.command == "status":
                print("\n".join(docker_lab.status(engine)))
            elif args.command == "down":
                docker_lab.down(engine, print, with_images=args.images)
    except LabError as err:
        print(f"pen-lab: {err}", file=sys.stderr)
        return 2
    except AssertionError as err:
        print(f"pen-lab: FAIL {story.scenario}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
