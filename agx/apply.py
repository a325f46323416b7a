"""`agx agents apply`: upsert the agents of a YAML file."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from api.validation import parse
from shared.agents import AgentSpec, upsert_agent
from shared.errors import InvalidField
from shared.services import Services


def load_specs(path: Path) -> list[AgentSpec]:
    """Read `agents:` (a list) or a bare list of agent mappings from YAML."""
    data = yaml.safe_load(path.read_text())
    items = data.get("agents") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise click.ClickException(f"{path}: expected a list of agents (or an 'agents:' key)")
    specs = []
    for index, item in enumerate(items):
        try:
            specs.append(parse(AgentSpec, item))
        except InvalidField as exc:
            raise click.ClickException(f"{path}: agents[{index}].{exc.message}") from None
    return specs


def apply_file(services: Services, path: Path) -> list[tuple[str, str]]:
    """Upsert every agent in one transaction; returns (name, created|updated|unchanged)."""
    specs = load_specs(path)
    with services.Session.begin() as session:
        return [(spec.name, upsert_agent(session, spec)) for spec in specs]
