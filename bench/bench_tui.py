"""Benchmark: the console's responsiveness with 500 nodes, against a bare Textual app.

Generates a site with --nodes nodes (bootstrap / validator / api) in a temporary directory,
then runs three sides, each in its own Python process so that imports and memory do not
mix, interleaved, --repeat times each:

- kconsole: `screens.app.build_app` on that site, an in-memory transport answering the
  first fleet poll, no periodic poll of its own (`poll_interval=0`); later polls are the
  call the app makes when a poll comes back (`KconsoleApp.show_fleet`);
- bare app: a Textual App with one DataTable (the same columns and rows: group, node,
  state, latency, height, detail) and a second screen with a small table, switched with
  the same keys (`switch_mode`, as the console does); a poll is a message whose handler
  sets the four polled cells of every row with `DataTable.update_cell`;
- bare app + Header, Footer: the same, with Textual's Header and Footer on both screens,
  as on every console screen: what is left between it and kconsole is the console's own.

Measured with Textual's Pilot (`run_test`, headless, 120x40). Frames are timed as the
compositor hands them to the driver, and turned into the escape sequences a terminal
would be sent (headless Textual drops them unrendered). A frame counts once its screen is
settled: its message queue is empty and no widget on it has a repaint or layout pending.

1. start: from `App.run_test()` to the first frame of the fleet table with every node's
   polled state (kconsole: the first poll, the runbooks read, the dashboard drawn);
2. keys: --presses keys, cursor down in the table and every eighth key a switch to the
   other screen and back (`c`, then `d`), each followed by a pause of 0-40 ms, while a
   poll of every node (each node changing state) arrives every 0.5 s: from the key event
   to the first frame that shows its effect. Keys are posted as the terminal driver posts
   them, not with `pilot.press`, which waits for the app to go idle after each key. The
   first visit of the other screen (composing it) is not counted. `switch_mode` holds
   frames back for 50 ms by design (`App.delay_update`), on every side;
3. refresh: one poll from the message to the settled frame, no key pressed: every node
   changing state (half go down, half come back), then no node changing;
4. peak RSS of the process (`ru_maxrss`), Python and Textual included.

Prints a Markdown table with the medians over the runs (key latencies: median and p95 of
every press of every run) and kconsole / bare ratios. Run from the repository root:

    python bench/bench_tui.py [--nodes 500] [--repeat 3] [--presses 200]

Not a test: nothing here asserts a time. The frame timing reads Textual internals
(`App._display`, a screen's message queue, a widget's pending repaint), as of Textual 8.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GROUPS = (("bootstrap", 0.04), ("validator", 0.76), ("api", 0.20))
SIZE = (120, 40)
POLL_EVERY = 0.5
HEIGHT = 1_882_211
SIDES = ("kconsole", "bare", "bare-chrome")

SITE_HEAD = """
[site]
name = "bench"
state_dir = "state"

[tiers.critical]
rpo = "15m"
rto = "1h"
kinds = ["blockchain-state", "validator-keys"]

[tiers.important]
rpo = "1h"
rto = "4h"
kinds = ["transaction-logs"]

[tiers.standard]
rpo = "24h"
rto = "24h"
kinds = ["system-logs", "full-system"]

[[contacts]]
name = "John Smith"
role = "Backup Administrator"
phone = "+1-555-0101"
on_call = "24/7"

[[contacts]]
name = "Jane Doe"
role = "Backup Engineer"
phone = "+1-555-0102"
on_call = "24/7"

[escalation.recovery]
title = "Recovery Issues"
levels = [{ role = "Backup Engineer", wait = "5m" }, { role = "Operations Lead", wait = "15m" }]

[access]
admin = ["bench"]
"""


def write_site(root: Path, nodes: int) -> Path:
    """site.toml with `nodes` nodes, grouped as a fleet is (few bootstrap, many validators)."""
    lines = [SITE_HEAD]
    i = 0
    for group, share in GROUPS:
        count = nodes - i if group == GROUPS[-1][0] else round(nodes * share)
        for n in range(1, count + 1):
            lines.append(
                f'[[nodes]]\nname = "{group}{n}"\nhost = "10.{i // 250}.{i % 250}.1"\n'
                f'groups = ["{group}"]\n'
            )
            i += 1
    path = root / "site.toml"
    path.write_text("\n".join(lines))
    return path


# -- the child process: one side, one run ------------------------------------------------


@dataclass
class NodeRow:
    """A node as the fleet table lists it (the bare app's data; kconsole reads the site)."""

    name: str
    group: str


def node_rows(site_path: Path) -> list[NodeRow]:
    """The site's nodes in the fleet table's order (group order, then file order)."""
    data = tomllib.loads(site_path.read_text())
    rank = {g: i for i, (g, _) in enumerate(GROUPS)}
    rows = [NodeRow(n["name"], n["groups"][0]) for n in data["nodes"]]
    return sorted(rows, key=lambda r: rank[r.group])


def poll_states(names: list[str], generation: int) -> list[tuple[str, str, float, int | None]]:
    """(node, state, latency ms, height) for poll `generation`: every node flips state each poll."""
    out = []
    for i, name in enumerate(names):
        up = (i + generation) % 2 == 0
        out.append(
            (
                name,
                "active" if up else "inactive",
                1.0 + (i + generation) % 7,
                HEIGHT + generation if up else None,
            )
        )
    return out


class Frames:
    """Times every frame the compositor hands to the (headless) driver.

    Headless, `App._display` drops the frame; here the frame is also turned into the
    escape sequences a terminal would be sent, so painting costs what it would on a tty.
    `expect(predicate)` resolves with the time of the first settled frame for which
    `predicate()` holds.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0
        self.sent = 0
        self._waiting: list[tuple[Callable[[], bool], asyncio.Future[float]]] = []
        original = app._display

        def display(screen: Any, renderable: Any) -> None:
            original(screen, renderable)
            if renderable is None or app._batch_count:  # held back: not sent to the terminal
                return
            if hasattr(renderable, "render_segments"):
                self.sent += len(renderable.render_segments(app.console))
            self.count += 1
            now = time.perf_counter()
            if self._waiting and self.settled(screen):
                for item in list(self._waiting):
                    predicate, future = item
                    if predicate():
                        self._waiting.remove(item)
                        if not future.done():
                            future.set_result(now)

        app._display = display

    def settled(self, screen: Any) -> bool:
        """Whether this frame shows everything the screen's widgets have asked to draw."""
        if screen is not self.app.screen or not screen._message_queue.empty():
            return False
        return not any(
            w._repaint_required or w._layout_required for w in screen.walk_children(with_self=False)
        )

    def expect(self, predicate: Callable[[], bool]) -> asyncio.Future[float]:
        """A future: the time of the first settled frame for which `predicate()` holds."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting.append((predicate, future))
        return future


@dataclass
class Side:
    """What the measuring code needs from each app."""

    app: Any
    startup_done: Callable[[], bool]
    table: Callable[[], Any]
    post_poll: Callable[[int], Callable[[], bool]]
    """Post a poll with the states of `poll_states(generation)`; returns the predicate
    "this poll is handled"."""
    on_table_screen: Callable[[], bool]
    on_other_screen: Callable[[], bool]


def kconsole_side(site_path: Path) -> Side:
    """The console as `build_app` makes it, on an in-memory fleet."""
    from kconsole.fleet import NodeStatus
    from kconsole.runbook.load import shipped_runbooks_dir
    from kconsole.services import Services
    from kconsole.site import load_site
    from screens.app import build_app
    from screens.contacts import ContactsScreen
    from screens.dashboard import DashboardScreen
    from screens.widgets import FleetTable
    from tests.memory_transport import MemoryTransport

    site = load_site(site_path)
    transport = MemoryTransport()
    transport.reply("*", r"^systemctl is-active", stdout="active\n")
    app = build_app(
        site,
        Services(transport=transport),
        catalog=None,
        user="bench",
        runbook_dirs=[shipped_runbooks_dir()],
        poll_interval=0,
    )
    nodes = {n.name: n for n in site.nodes.values()}
    names = list(nodes)
    count = len(names)

    def dashboard() -> Any:
        return app.screen if isinstance(app.screen, DashboardScreen) else None

    def startup_done() -> bool:
        screen = dashboard()
        if screen is None or len(app.fleet) != count or not app.runbooks_loaded:
            return False
        table = screen.query_one(FleetTable)
        return table.row_count == count and str(table.get_cell(names[-1], "state")) != "… polling"

    def post_poll(generation: int) -> Callable[[], bool]:
        statuses = [
            NodeStatus(
                name,
                nodes[name].host,
                nodes[name].groups,
                state,
                f"{nodes[name].service} {state}",
                latency,
                height,
            )
            for name, state, latency, height in poll_states(names, generation)
        ]
        when = app.clock.now()
        app.call_later(app.show_fleet, statuses, when)
        return lambda: app.fleet_polled_at is when  # a new datetime object per poll

    return Side(
        app,
        startup_done,
        lambda: app.screen.query_one(FleetTable),
        post_poll,
        lambda: dashboard() is not None,
        lambda: isinstance(app.screen, ContactsScreen),
    )


def bare_side(site_path: Path, chrome: bool) -> Side:
    """The same table in a bare Textual app (with Header and Footer if `chrome`)."""
    from dataclasses import dataclass as message_dataclass

    from rich.text import Text
    from textual.app import App, ComposeResult
    from textual.message import Message
    from textual.screen import Screen
    from textual.widgets import DataTable, Footer, Header

    rows = node_rows(site_path)
    names = [r.name for r in rows]
    style = {"active": "green", "inactive": "red"}
    word = {"active": "● active", "inactive": "○ inactive"}

    class TableScreen(Screen[None]):
        def compose(self) -> ComposeResult:
            if chrome:
                yield Header()
            yield DataTable(id="fleet", cursor_type="row")
            if chrome:
                yield Footer()

        def on_mount(self) -> None:
            table = self.query_one(DataTable)
            for label, key, width in (
                ("Group", "group", 9),
                ("Node", "node", 14),
                ("State", "state", 14),
                ("Latency", "latency", 8),
                ("Height", "height", 9),
                ("Detail", "detail", 40),
            ):
                table.add_column(label, key=key, width=width)
            last = None
            for r in rows:  # as kconsole's first poll leaves them: every node active
                table.add_row(
                    r.group if r.group != last else "",
                    r.name,
                    Text(word["active"], style["active"]),
                    "1 ms",
                    "-",
                    "kaldrix-node active",
                    key=r.name,
                )
                last = r.group

    class OtherScreen(Screen[None]):
        def compose(self) -> ComposeResult:
            if chrome:
                yield Header()
            yield DataTable(id="contacts", cursor_type="row")
            if chrome:
                yield Footer()

        def on_mount(self) -> None:
            table = self.query_one(DataTable)
            table.add_columns("Name", "Role", "Phone")
            table.add_row("John Smith", "Backup Administrator", "+1-555-0101")
            table.add_row("Jane Doe", "Backup Engineer", "+1-555-0102")

    class BareApp(App[None]):
        MODES: ClassVar[dict[str, Any]] = {"table": TableScreen, "other": OtherScreen}
        DEFAULT_MODE = "table"
        BINDINGS: ClassVar[list[Any]] = [
            ("d", "switch_mode('table')", "Table"),
            ("c", "switch_mode('other')", "Other"),
        ]

        @message_dataclass
        class Polled(Message):
            states: list[tuple[str, str, float, int | None]]
            seq: int

        def __init__(self) -> None:
            super().__init__()
            self.seq = 0

        def on_bare_app_polled(self, message: Polled) -> None:
            self.seq = message.seq
            table = self.get_screen_stack("table")[0].query_one(DataTable)
            for name, state, latency, height in message.states:
                table.update_cell(name, "state", Text(word[state], style[state]))
                table.update_cell(name, "latency", f"{latency:.0f} ms")
                table.update_cell(name, "height", str(height) if height else "-")
                table.update_cell(name, "detail", f"kaldrix-node {state}")

    app = BareApp()

    def startup_done() -> bool:
        screen = app.screen
        if not isinstance(screen, TableScreen):
            return False
        return screen.query_one(DataTable).row_count == len(rows)

    seq = 0

    def post_poll(generation: int) -> Callable[[], bool]:
        nonlocal seq
        seq += 1
        app.post_message(BareApp.Polled(poll_states(names, generation), seq))
        return lambda s=seq: app.seq == s

    return Side(
        app,
        startup_done,
        lambda: app.screen.query_one(DataTable),
        post_poll,
        lambda: isinstance(app.screen, TableScreen),
        lambda: isinstance(app.screen, OtherScreen),
    )


async def measure(side: Side, presses: int, refreshes: int, seed: int) -> dict[str, Any]:
    """Start, keys under polls, refreshes: times in seconds."""
    from textual import events

    app = side.app
    frames = Frames(app)
    generation = 1
    t0 = time.perf_counter()
    started = frames.expect(side.startup_done)
    async with app.run_test(size=SIZE) as pilot:
        start = await asyncio.wait_for(started, 60) - t0
        await pilot.pause()

        async def press(key: str, predicate: Callable[[], bool]) -> float:
            shown = frames.expect(predicate)
            event = events.Key(key, key if len(key) == 1 else None)
            event.set_sender(app)
            sent = time.perf_counter()
            app.post_message(event)
            return await asyncio.wait_for(shown, 30) - sent

        # keys, while every node is polled every POLL_EVERY seconds
        polls = 0

        def poll() -> None:
            nonlocal generation, polls
            generation += 1
            polls += 1
            side.post_poll(generation)

        # the first visit of the other screen composes it: not counted
        await press("c", side.on_other_screen)
        await press("d", side.on_table_screen)
        await pilot.pause()
        timer = app.set_interval(POLL_EVERY, poll)
        rng = random.Random(seed)
        cursor: list[float] = []
        away: list[float] = []
        back: list[float] = []
        step = 1
        i = 0
        while i < presses:
            if i % 8 == 7 and i + 1 < presses:
                away.append(await press("c", side.on_other_screen))
                await asyncio.sleep(rng.uniform(0, 0.04))
                back.append(await press("d", side.on_table_screen))
                i += 2
            else:
                table = side.table()
                if not 0 < table.cursor_row + step < table.row_count:
                    step = -step  # at an end of the table: turn round
                target = table.cursor_row + step
                cursor.append(
                    await press(
                        "down" if step > 0 else "up", lambda t=table, r=target: t.cursor_row == r
                    )
                )
                i += 1
            await asyncio.sleep(rng.uniform(0, 0.04))
        timer.stop()
        await pilot.pause()

        # one poll at a time, nothing else happening: every node changes, then none does
        assert side.on_table_screen()
        refresh: list[float] = []
        unchanged: list[float] = []
        for times, same in ((refresh, False), (unchanged, True)):
            for _ in range(refreshes):
                generation += 0 if same else 1
                posted = time.perf_counter()
                handled = side.post_poll(generation)
                times.append(await asyncio.wait_for(frames.expect(handled), 30) - posted)
                await pilot.pause()
        app.exit()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "start": start,
        "cursor": cursor,
        "away": away,
        "back": back,
        "refresh": refresh,
        "unchanged": unchanged,
        "polls": polls,
        "frames": frames.count,
        "sent": frames.sent,
        "rss_mib": rss,
    }


def child(args: argparse.Namespace) -> int:
    site_path = Path(args.site)
    if args.child == "kconsole":
        side = kconsole_side(site_path)
    else:
        side = bare_side(site_path, chrome=args.child == "bare-chrome")
    result = asyncio.run(measure(side, args.presses, args.refreshes, args.seed))
    print(json.dumps(result))
    return 0


# -- the parent: run the children, print the table ----------------------------------------


def run_child(side: str, site: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        side,
        "--site",
        str(site),
        "--presses",
        str(args.presses),
        "--refreshes",
        str(args.refreshes),
        "--seed",
        str(seed),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{side} run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.0f} ms" if value >= 100 else f"{value:.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--presses", type=int, default=200)
    parser.add_argument("--refreshes", type=int, default=15)
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--site", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-tui-") as tmp:
        site = write_site(Path(tmp), args.nodes)
        for rep in range(args.repeat):
            order = SIDES if rep % 2 == 0 else SIDES[::-1]
            for side in order:
                result = run_child(side, site, args, seed=rep)
                runs[side].append(result)
                print(
                    f"  {side} run {rep + 1}: start {ms(result['start'])}, "
                    f"cursor median {ms(statistics.median(result['cursor']))}, "
                    f"refresh median {ms(statistics.median(result['refresh']))}, "
                    f"{result['polls']} polls, RSS {result['rss_mib']:.0f} MiB",
                    file=sys.stderr,
                )
    print(f"  total {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    def pooled(side: str, key: str) -> list[float]:
        return [v for run in runs[side] for v in run[key]]

    def per_run(key: str) -> list[float]:
        """Each side's median over its runs of a once-per-run figure."""
        return [statistics.median(run[key] for run in runs[side]) for side in SIDES]

    def median(key: str) -> list[float]:
        """Each side's median of every sample of every run."""
        return [statistics.median(pooled(side, key)) for side in SIDES]

    rows: list[tuple[str, list[float], Callable[[float], str]]] = [
        (
            "start: `run_test()` to the fleet table drawn with every node's state",
            per_run("start"),
            ms,
        ),
    ]
    for key, what in (
        ("cursor", "cursor down in the fleet table"),
        ("away", "switch to the other screen (`c`)"),
        ("back", "switch back to the fleet table (`d`)"),
    ):
        rows.append((f"key: {what}, median", median(key), ms))
        rows.append((f"key: {what}, p95", [p95(pooled(side, key)) for side in SIDES], ms))
    rows.append((f"refresh: one poll, {args.nodes} nodes changing state", median("refresh"), ms))
    rows.append(
        ("refresh: one poll, no node changing (bare: every row set again)", median("unchanged"), ms)
    )
    rows.append(("peak RSS", per_run("rss_mib"), lambda v: f"{v:.0f} MiB"))

    import textual

    print(
        f"\n{args.nodes} nodes, {SIZE[0]}x{SIZE[1]} headless, Textual {textual.__version__}, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {args.presses} keys per run "
        f"with a poll every {POLL_EVERY:g} s; median of {args.repeat} runs per side\n"
    )
    print(
        "| measure | kconsole | bare app | kconsole / bare | bare app + Header, Footer "
        "| kconsole / that |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for what, (k, bare, chrome), fmt in rows:
        print(
            f"| {what} | {fmt(k)} | {fmt(bare)} | {k / bare:.2f}x | {fmt(chrome)} "
            f"| {k / chrome:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
