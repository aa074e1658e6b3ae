"""`wait.until`: poll a real condition instead of the plan's fixed `sleep 30`."""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from kconsole.actions.base import Action, ActionResult, Field, StepContext
from kconsole.actions.http import http_get
from kconsole.actions.shell import run_local
from kconsole.actions.ssh import run_on_node, with_sudo
from kconsole.config import format_duration, parse_duration
from kconsole.errors import OperationFailed


class WaitUntil(Action):
    """Poll a command or URL until it passes, or fail when `within` runs out.

    With `advancing = true` the command's output must be a number that grows between two
    polls (a chain height that moves), which proves the node is doing work, not just up.
    """

    name = "wait.until"
    help = "Poll a command or health URL until it passes."
    fields: ClassVar[dict[str, Field]] = {
        "command": Field("command", help="command run on the step's node (or locally without one)"),
        "url": Field("text", help="URL to GET"),
        "match": Field("str", help="regular expression the output must contain"),
        "status": Field("int", default=200, help="HTTP status wanted with url"),
        "json": Field("str", help="dotted path of a value in JSON output to test (e.g. height)"),
        "advancing": Field("bool", help="output is a number that must grow between polls"),
        "interval": Field("duration", default="2s"),
        "within": Field("duration", default="5m", help="give up after this long"),
        "sudo": Field("bool"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Poll until the condition holds."""
        v = ctx.values
        if not v.get("command") and not v.get("url"):
            raise OperationFailed(f"step {ctx.step.id}: wait.until needs command or url.")
        interval = parse_duration(v.get("interval") or "2s")
        within = parse_duration(v.get("within") or "5m")
        clock = ctx.services.clock
        deadline = clock.monotonic() + within
        last_value: float | None = None
        last = "no answer yet"
        polls = 0
        while True:
            polls += 1
            ok, last, number = await self._poll(ctx)
            if ok and v.get("advancing"):
                if number is None:
                    ok, last = False, f"output {last!r} is not a number"
                elif last_value is None or number <= last_value:
                    ok = False
                    if last_value is not None:
                        last = f"{_num(number)} has not advanced from {_num(last_value)}"
                    last_value = number if last_value is None else max(last_value, number)
            if ok:
                await ctx.emit("stdout", f"condition met after {polls} poll(s): {last}")
                return ActionResult(exit_code=0, stdout=last, summary=last)
            if clock.monotonic() + interval > deadline:
                raise OperationFailed(
                    f"condition not met within {format_duration(within)}; last: {last}."
                )
            await clock.sleep(interval)

    async def _poll(self, ctx: StepContext) -> tuple[bool, str, float | None]:
        v = ctx.values
        pattern = v.get("match")
        if v.get("url"):
            try:
                resp = await http_get(v["url"], ctx.services.http_timeout)
            except OperationFailed as exc:
                return False, str(exc).rstrip("."), None
            text = resp.text.strip()
            ok = resp.status_code == int(v.get("status") or 200)
            shown = f"HTTP {resp.status_code}"
        else:
            command = with_sudo(v["command"], bool(v.get("sudo")))
            try:
                if ctx.node is not None:
                    result = await run_on_node(ctx, command, timeout=60)
                else:
                    result = await run_local(command, ctx)
            except OperationFailed as exc:
                return False, str(exc).rstrip("."), None
            text = result.stdout.strip()
            ok = result.exit_code == 0
            shown = f"exit {result.exit_code}: {text[:120]}" if not ok else text[:120]
        if v.get("json") and text:
            try:
                value: Any = json.loads(text)
                for part in str(v["json"]).split("."):
                    value = value[part]
                text = str(value)
            except (ValueError, KeyError, TypeError):
                return False, f"no {v['json']} in output {text[:80]!r}", None
            shown = text if ok else shown
        if ok and pattern and not re.search(pattern, text):
            ok = False
            shown = f"{text[:120]!r} does not match {pattern!r}"
        try:
            number = float(text.split()[-1]) if text else None
        except ValueError:
            number = None
        return ok, shown, number


def _num(value: float) -> str:
    """A number as an operator reads it: 1250270, not 1.25027e+06."""
    return str(int(value)) if value == int(value) else f"{value:.3f}"
