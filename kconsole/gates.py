"""Gates: the moments a run stops for the operator to say yes.

The executor never asks anyone itself; it awaits an injected `confirm(GateRequest)`
coroutine. The CLI asks on the terminal, the TUI shows a modal, `--yes` says yes, and
with no terminal the answer is None: the run stops there, resumable.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from dataclasses import dataclass, field
from typing import Literal

GateKind = Literal["confirm", "type", "checklist", "rerun"]


@dataclass
class GateRequest:
    """What the operator is asked to approve."""

    run_id: str
    step_id: str
    title: str
    kind: GateKind
    node: str | None = None
    expected: str = ""
    prompt: str = ""
    checklist: list[str] = field(default_factory=list)
    guide: str = ""
    destructive: bool = False
    note: str = ""
    answered_by: str = ""
    skippable: bool = False
    """A drill's gate: the operator may skip the step (recorded; later steps still run)."""
    skipped: bool = False
    """Set with a True answer: skip the step instead of running it."""
    approvers: int = 1
    """Different accounts this gate needs (2: a two-person gate)."""
    approved_by: list[str] = field(default_factory=list)
    """Accounts that approved it already (they cannot approve it again)."""

    def approval_line(self) -> str:
        """Who approved a two-person gate so far and how many more it needs ("" otherwise)."""
        if self.approvers < 2:
            return ""
        more = self.approvers - len(self.approved_by)
        done = f"approved by {', '.join(self.approved_by)}; " if self.approved_by else ""
        return (
            f"{done}needs {more} more approval{'s' if more > 1 else ''} "
            f"from {'a different account' if self.approved_by else 'different accounts'}"
        )

    def question(self) -> str:
        """The one-line question shown to the operator."""
        where = f" on {self.node}" if self.node else ""
        if self.kind == "type":
            return f"{self.title}{where}: type {self.expected!r} to confirm"
        if self.kind == "rerun":
            return f"{self.title}{where} was in flight when the run stopped; run it again?"
        return self.prompt or f"{self.title}{where}: proceed?"

    def accepts(self, typed: str) -> bool:
        """Whether a typed answer confirms this gate."""
        if self.kind == "type":
            return typed.strip() == self.expected
        return typed.strip().lower() in ("y", "yes")


async def confirm_yes(request: GateRequest) -> bool:
    """`--yes`: every gate is confirmed (and recorded as confirmed by --yes)."""
    request.answered_by = "--yes"
    return True


async def confirm_unattended(request: GateRequest) -> None:
    """No terminal and no `--yes`: stop at the gate."""
    return None


TYPED_TRIES = 3
"""Answers a typed gate takes on the terminal before a mismatch counts as a refusal."""


async def confirm_on_terminal(request: GateRequest) -> bool:
    """Ask on the controlling terminal; a typed gate needs the exact value."""
    print(f"\n== gate: {request.question()}", file=sys.stderr)
    if request.approval_line():
        print(f"   two-person gate: {request.approval_line()}", file=sys.stderr)
    if request.guide:
        print(request.guide.strip(), file=sys.stderr)
    for item in request.checklist:
        print(f"  [ ] {item}", file=sys.stderr)
    hint = "" if request.kind == "type" else " [y/N]"
    answer = await _ask(f"> {hint.strip()} " if hint else "> ")
    if answer is None:
        return False
    ok = request.accepts(answer)
    tries = 1
    while request.kind == "type" and not ok and answer.strip() and tries < TYPED_TRIES:
        # A slip of the finger at 3 a.m. (validator2 for validator3) is not a refusal: say
        # so and ask again. An empty line still refuses.
        print(
            f"'{answer.strip()}' does not match {request.expected!r}; type it again, "
            "or press Enter to refuse.",
            file=sys.stderr,
        )
        answer = await _ask("> ")
        if answer is None:
            return False
        ok = request.accepts(answer)
        tries += 1
    if ok and request.kind == "checklist":
        note = await _ask("note (optional)> ")
        request.note = (note or "").strip()
    request.answered_by = "terminal"
    return ok


async def ask_line(prompt: str) -> str | None:
    """One line from the terminal without blocking the loop (None at end of input)."""
    return await _ask(prompt)


async def _ask(prompt: str) -> str | None:
    """Read a line without blocking the loop. A daemon thread, not the default executor:
    Ctrl+C at a prompt must stop the run at once, not wait for an Enter that never comes."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str | None] = loop.create_future()

    def deliver(line: str | None) -> None:
        if not answer.done():
            answer.set_result(line)

    def read() -> None:
        line = _read_line(prompt)
        with contextlib.suppress(RuntimeError):  # the run was stopped and its loop is gone
            loop.call_soon_threadsafe(deliver, line)

    threading.Thread(target=read, name="gate-prompt", daemon=True).start()
    return await answer


def _read_line(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:
        return None
