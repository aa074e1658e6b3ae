"""What every action is: a named schema of fields and an async `run` over a StepContext.

An action never talks to the operator directly and never touches the journal; it gets
rendered field values and services from the context and returns an `ActionResult`, or
raises `OperationFailed` with one sentence saying why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from kconsole.gates import GateRequest
    from kconsole.runbook.model import Step
    from kconsole.services import Services
    from kconsole.site import Node, Site

FieldKind = Literal["command", "text", "str", "int", "bool", "duration", "list", "table", "number"]


@dataclass(frozen=True)
class Field:
    """One key an action accepts in a step.

    `command` values are templates whose substituted values are shell-quoted; `text`
    values are templates rendered as plain text; other kinds are taken literally.
    """

    kind: FieldKind
    required: bool = False
    help: str = ""
    choices: tuple[str, ...] = ()
    default: Any = None

    @property
    def templated(self) -> bool:
        """Whether `{...}` placeholders in this field are rendered."""
        return self.kind in ("command", "text") or self.kind == "list"


@dataclass
class ActionResult:
    """What an action reports back: exit status, output and structured data."""

    exit_code: int | None = 0
    stdout: str = ""
    stderr: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


Emit = Callable[[str, str], Awaitable[None]]
Confirm = Callable[["GateRequest"], Awaitable[bool | None]]


@dataclass
class StepContext:
    """Everything an action may use while it runs one step instance."""

    run_id: str
    step: Step
    node: Node | None
    values: dict[str, Any]
    site: Site
    services: Services
    emit: Emit
    confirm: Confirm
    drill: bool = False
    user: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def require_node(self) -> Node:
        """The node this instance runs on; a step without one is a runbook bug."""
        if self.node is None:
            from kconsole.errors import OperationFailed

            raise OperationFailed(
                f"step {self.step.id} needs a node (for_each or node =) but has none."
            )
        return self.node


class Action:
    """Base class of every action. Subclasses set `name`, `fields` and implement `run`."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    fields: ClassVar[dict[str, Field]] = {}
    needs_node: ClassVar[bool] = False
    destructive: ClassVar[bool] = False
    admin_only: ClassVar[str] = ""
    """What the action does, when only an admin may do it (checked before the run starts)."""

    async def run(self, ctx: StepContext) -> ActionResult:  # pragma: no cover - abstract
        """Do the work of one step instance."""
        raise NotImplementedError
