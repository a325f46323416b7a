"""Pages: the execution list (filters in the URL, cursor paging) and one execution's page."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import redirect, render_template, request

from api.context import principal, services
from api.executions import ListQuery, page_of, queue_positions
from api.pages.base import bp
from api.serialize import execution_dict
from api.validation import parse
from shared.errors import InvalidField, NotFound
from shared.states import ExecutionStatus, Trigger
from shared.store import agents, executions

PAGE_SIZE = 50  #: rows per page of the list
#: Query parameters the list keeps in its URL: the API's own names.
FILTERS = ("agent", "status", "trigger", "since", "until", "q")


def visible_agents() -> list[str]:
    """Names of the agents the signed-in key may see, sorted."""
    who = principal()
    with services().Session() as session:
        return sorted(a.name for a in agents.all_agents(session) if who.may_see(a.name))


def list_page(args: dict[str, str]) -> tuple[dict[str, Any], str | None]:
    """A page of executions for these query parameters, or (empty page, the problem)."""
    data = {k: v for k, v in args.items() if v != "" and (k in FILTERS or k == "cursor")}
    try:
        query = parse(ListQuery, {**data, "limit": PAGE_SIZE})
        return page_of(query), None
    except InvalidField as exc:
        return {"items": [], "next_cursor": None}, exc.message


@bp.get("/")
def home() -> Any:
    """The executions are the front page."""
    return redirect("/executions")


@bp.get("/executions")
def execution_list() -> Any:
    """All executions the key may see, newest first, filtered as the URL says."""
    page, problem = list_page(request.args.to_dict())
    filters = {k: request.args.get(k, "") for k in FILTERS}
    status = 422 if problem else 200
    return render_template(
        "executions.html",
        page=page,
        problem=problem,
        filters=filters,
        filtered=any(filters.values()),
        agents=visible_agents(),
        statuses=[s.value for s in ExecutionStatus],
        triggers=[t.value for t in Trigger],
        has_cursor=bool(request.args.get("cursor")),
        newest_url=_url(filters) if request.args.get("cursor") else None,
        older_url=_url(filters, page["next_cursor"]) if page["next_cursor"] else None,
    ), status


def _url(filters: dict[str, str], cursor: str | None = None) -> str:
    """This list's address with the same filters (and a cursor)."""
    params = {k: v for k, v in filters.items() if v}
    if cursor:
        params["cursor"] = cursor
    return "/executions" + ("?" + urlencode(params) if params else "")


@bp.get("/executions/<execution_id>")
def execution_detail(execution_id: str) -> Any:
    """One execution: its record, live transcript, and what can be done with it."""
    who = principal()
    with services().Session() as session:
        row = executions.get(session, execution_id[:64])
        agent = agents.get(session, row.agent_name) if row is not None else None
    if row is None or agent is None or not who.may_see(row.agent_name):
        raise NotFound(f"execution '{execution_id[:64]}' does not exist")
    data = execution_dict(row, who, queue_positions([row]).get(row.id))
    return render_template("execution.html", e=data, agent=agent, terminal=_terminal(row.status))


def _terminal(status: str) -> bool:
    return ExecutionStatus(status).terminal
