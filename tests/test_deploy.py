"""deploy/ against the code: commands the CLI parses, ports and settings the processes use,
probe paths the API serves, metrics the code exports, and each file against its schema
(compose-spec, Kubernetes' own, promtool, kustomize) — no Docker daemon or cluster needed."""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml
from flask import Flask
from prometheus_client.metrics import MetricWrapperBase

from agx.cli import main as cli
from shared import metrics
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "agx.json"
#: Seconds a worker pool gets past AGX_DRAIN_SECONDS to record the runs it stopped.
DRAIN_MARGIN_SECONDS = 30
#: The agx process kinds that run for good, and the option naming each one's HTTP port.
PORT_OPTION = {
    "api": "port",
    "workers": "metrics_port",
    "scheduler": "metrics_port",
    "reaper": "metrics_port",
}


# --- reading the files ------------------------------------------------------------------


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def _compose() -> dict[str, Any]:
    return _yaml_docs(COMPOSE)[0]


def _agx_services() -> dict[str, dict[str, Any]]:
    """Compose services that run the agx image (the ones built from this repository)."""
    return {name: svc for name, svc in _compose()["services"].items() if "build" in svc}


def _kustomization_resources(folder: Path) -> list[Path]:
    """Every file a kustomization (or component) lists, recursively, in order."""
    listed = _yaml_docs(folder / "kustomization.yaml")[0]
    found: list[Path] = []
    for entry in listed.get("resources", []) + listed.get("components", []):
        path = (folder / entry).resolve()
        found += _kustomization_resources(path) if path.is_dir() else [path]
    return found


def _k8s_objects() -> list[dict[str, Any]]:
    """Every object of the base and of both autoscaling components."""
    paths = _kustomization_resources(K8S)
    paths += _kustomization_resources(K8S / "keda") + _kustomization_resources(K8S / "hpa")
    return [doc for path in paths for doc in _yaml_docs(path)]


def _k8s(kind: str) -> list[dict[str, Any]]:
    return [obj for obj in _k8s_objects() if obj["kind"] == kind]


def _by_name(kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in _k8s(kind)}


def _pod_specs() -> dict[str, dict[str, Any]]:
    """Pod specs of the Deployments and the Job, by object name."""
    return {
        obj["metadata"]["name"]: obj["spec"]["template"]["spec"]
        for obj in _k8s("Deployment") + _k8s("Job")
    }


def _agx_containers() -> dict[str, dict[str, Any]]:
    """Every container running the agx image, by its object's name."""
    return {
        name: container
        for name, spec in _pod_specs().items()
        for container in spec["containers"]
        if container["image"] == _kustomize_image_name()
    }


def _kustomize_image_name() -> str:
    (image,) = _yaml_docs(K8S / "kustomization.yaml")[0]["images"]
    return str(image["name"])


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuations joined, comments out."""
    lines = [
        line
        for line in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def _last_stage() -> list[tuple[str, str]]:
    steps = _dockerfile()
    start = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[start:]


def _base_images() -> list[str]:
    """The image of every FROM, with ARG defaults substituted."""
    args: dict[str, str] = {}
    images = []
    for word, rest in _dockerfile():
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
        elif word == "FROM":
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0]))
    return images


def _exec_form(arguments: str) -> list[str]:
    parsed = json.loads(arguments)
    assert isinstance(parsed, list), f"use the exec form: {arguments}"
    return [str(item) for item in parsed]


# --- the code's side --------------------------------------------------------------------


def _parse(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse `agx ARGV` with the real click command: unknown commands/options raise."""
    name, *rest = argv
    with click.Context(cli) as parent:
        command = cli.get_command(parent, name)
        assert command is not None, f"`agx {name}` is no command of the CLI"
        try:
            ctx = command.make_context(name, list(rest), parent=parent)
        except click.UsageError as exc:
            pytest.fail(f"`agx {shlex.join(argv)}`: {exc.format_message()}")
    return name, ctx.params


def _agx_invocations() -> list[tuple[str, list[str]]]:
    """Every agx command line in deploy/: (where, argv after `agx`)."""
    found = [(f"compose {n}", svc["command"]) for n, svc in _agx_services().items()]
    found += [(f"k8s {name}", c["args"]) for name, c in _agx_containers().items()]
    found += [("Dockerfile CMD", _exec_form(dict(_last_stage())["CMD"]))]
    return found


def _source_files() -> list[Path]:
    """The Python files of the installed packages (pyproject's list), tests excluded."""
    tops = {name.split(".")[0] for name in _pyproject()["tool"]["setuptools"]["packages"]}
    return [path for top in sorted(tops) for path in (ROOT / top).rglob("*.py")]


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


def _read_by_code(name: str, sources: list[str]) -> bool:
    """True when the code reads NAME: a literal in the source, or a Settings field that
    `Settings.from_env` fills from `AGX_<FIELD>`."""
    if any(re.search(rf"[\"']{name}[\"']", text) for text in sources):
        return True
    field = name.removeprefix("AGX_").lower()
    if field not in {f.name for f in fields(Settings)}:
        return False
    default = getattr(Settings.from_env({}), field)
    return bool(getattr(Settings.from_env({name: "7"}), field) != default)


def _exported_metrics() -> dict[str, set[str]]:
    """Every series name the code exports (as Prometheus stores it) with its label names."""
    series: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        labels = set(value._labelnames)
        if value._type == "counter":
            series[value._name + "_total"] = labels
        elif value._type == "histogram":
            series[value._name + "_bucket"] = labels | {"le"}
            series[value._name + "_sum"] = series[value._name + "_count"] = labels
        else:
            series[value._name] = labels
    for family in metrics.SlotsCollector(lambda: iter(())).collect():
        series[family.name] = set(family._labelnames)  # type: ignore[attr-defined]
    return series


def _drain_seconds(environment: dict[str, str]) -> float:
    """AGX_DRAIN_SECONDS as the processes read it (the default when unset)."""
    return Settings.from_env({k: str(v) for k, v in environment.items()}).drain_seconds


def _duration_seconds(text: str) -> float:
    """A compose duration ("330s", "5m30s", "1h") in seconds."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", text)
    assert match and text, f"not a compose duration: {text!r}"
    hours, minutes, seconds = (float(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is not installed here (Debian package prometheus)")
    return found


# --- commands, ports, settings ----------------------------------------------------------


def test_every_agx_command_line_in_deploy_parses_with_the_real_cli():
    invocations = _agx_invocations()
    kinds = {_parse(argv)[0] for _, argv in invocations}
    assert kinds >= {"migrate", *PORT_OPTION}, "every process kind is deployed"
    for where, argv in invocations:
        name, params = _parse(argv)
        if name in PORT_OPTION:
            assert params[PORT_OPTION[name]], f"{where}: `agx {name}` serves HTTP on a port"
        if name == "api":
            assert params["host"] == "0.0.0.0", f"{where}: the API listens beyond loopback"


def _compose_ports() -> dict[str, int]:
    return {
        name: _parse(svc["command"])[1][PORT_OPTION[kind]]
        for name, svc in _agx_services().items()
        if (kind := svc["command"][0]) in PORT_OPTION
    }


def test_prometheus_scrapes_every_process_kind_on_the_port_its_command_serves():
    config = _yaml_docs(DEPLOY / "prometheus" / "prometheus.yml")[0]
    targets: dict[str, int] = {}
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sd in job.get("dns_sd_configs", []):
            targets.update({name: sd["port"] for name in sd["names"]})
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets[host] = int(port)
    assert targets == _compose_ports()


def test_compose_healthchecks_and_published_ports_match_each_command():
    ports = _compose_ports()
    for name, svc in _agx_services().items():
        url = svc["environment"].get("HEALTHCHECK_URL")
        if name not in ports:
            assert svc.get("healthcheck") == {"disable": True}, f"{name} is one-shot"
            continue
        assert urlsplit(url).port == ports[name], f"{name}: its healthcheck probes its own port"
        path = urlsplit(url).path
        assert path == ("/healthz" if svc["command"][0] == "api" else "/metrics"), name
    assert _agx_services()["api"]["ports"] == [f"{ports['api']}:{ports['api']}"]


def test_kubernetes_containers_expose_and_annotate_the_port_their_command_serves():
    deployments = _by_name("Deployment")
    for name, container in _agx_containers().items():
        kind, params = _parse(container["args"])
        if kind not in PORT_OPTION:
            assert "ports" not in container, name
            continue
        port = params[PORT_OPTION[kind]]
        assert [p["containerPort"] for p in container["ports"]] == [port], name
        annotations = deployments[name]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port), name
        assert annotations["prometheus.io/path"] == "/metrics", name
        named = {p["name"] for p in container["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            if probe in container:
                assert container[probe]["httpGet"]["port"] in named, f"{name} {probe}"


def test_the_image_exposes_every_port_the_commands_serve():
    exposed = {int(p) for p in dict(_last_stage())["EXPOSE"].split()}
    served = set(_compose_ports().values())
    served |= {p["containerPort"] for c in _agx_containers().values() for p in c.get("ports", [])}
    assert exposed == served


def _agx_names_in_deploy() -> set[str]:
    texts = [p.read_text(encoding="utf-8") for p in DEPLOY.rglob("*") if p.is_file()]
    return {name for text in texts for name in re.findall(r"\bAGX_[A-Z0-9_]+\b", text)}


def test_every_agx_setting_named_in_deploy_is_one_the_code_reads():
    sources = [path.read_text(encoding="utf-8") for path in _source_files()]
    names = _agx_names_in_deploy()
    assert {"AGX_DATABASE_URL", "AGX_REDIS_URL", "AGX_BROKER_URL", "AGX_DRAIN_SECONDS"} <= names
    unknown = sorted(name for name in names if not _read_by_code(name, sources))
    assert not unknown, f"settings no code reads: {unknown}"
    assert not _read_by_code("AGX_NO_SUCH_SETTING", sources), "the check can fail"


def test_compose_and_kubernetes_give_the_same_settings():
    compose_env = set(_agx_services()["api"]["environment"]) - {"HEALTHCHECK_URL"}
    config = _by_name("ConfigMap")["agx-config"]["data"]
    secret = _by_name("Secret")["agx-secrets"]["stringData"]
    assert compose_env == set(config) | set(secret)
    assert not set(config) & set(secret)
    for container in _agx_containers().values():
        refs = {
            name
            for ref in container["envFrom"]
            for name in (ref.get("configMapRef") or ref.get("secretRef") or {}).values()
        }
        assert refs == {"agx-config", "agx-secrets"}


def test_worker_pools_get_the_drain_and_a_margin_before_a_hard_kill():
    workers = [s for s in _agx_services().values() if s["command"][0] == "workers"]
    assert workers
    for svc in workers:
        grace = _duration_seconds(svc["stop_grace_period"])
        assert grace >= _drain_seconds(svc["environment"]) + DRAIN_MARGIN_SECONDS
    config = _by_name("ConfigMap")["agx-config"]["data"]
    for name, container in _agx_containers().items():
        if container["args"][0] == "workers":
            grace = _pod_specs()[name]["terminationGracePeriodSeconds"]
            assert grace >= _drain_seconds(config) + DRAIN_MARGIN_SECONDS


def test_probe_paths_are_routes_the_api_serves():
    from api import health
    from api import metrics as api_metrics

    app = Flask(__name__)
    for blueprint in (health.bp, api_metrics.bp):  # as create_app registers them
        app.register_blueprint(blueprint)
    routes = {rule.rule for rule in app.url_map.iter_rules() if "GET" in (rule.methods or ())}
    (api,) = [c for c in _agx_containers().values() if c["args"][0] == "api"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz", "/metrics"} <= routes
    last = dict(_last_stage())
    port = _parse(_exec_form(last["CMD"]))[1]["port"]
    assert f"HEALTHCHECK_URL=http://127.0.0.1:{port}/healthz" in last["ENV"].split()


# --- compose ----------------------------------------------------------------------------


def test_compose_file_follows_the_compose_spec():
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendored / "compose-spec.json").read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(_compose())]
    assert not errors
    broken = _compose()
    broken["services"]["workers"]["stop_grace_priod"] = "5s"
    assert not validator.is_valid(broken), "the schema refuses unknown keys"


def test_docker_compose_accepts_the_file_where_docker_compose_is_installed():
    docker = shutil.which("docker")
    probe = [docker or "docker", "compose", "version"]
    if docker is None or subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("docker compose is not installed here (the schema check stands in)")
    done = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_compose_services_share_one_image_and_wait_for_migrate():
    services = _compose()["services"]
    agx = _agx_services()
    assert len({json.dumps([s["image"], s["build"]]) for s in agx.values()}) == 1
    (build,) = {json.dumps(s["build"]) for s in agx.values()}
    context = (DEPLOY / json.loads(build)["context"]).resolve()
    assert context == ROOT and (context / json.loads(build)["dockerfile"]).is_file()
    for name, svc in services.items():
        assert set(svc.get("depends_on", {})) <= set(services), name
    migrate = [n for n, s in agx.items() if s["command"] == ["migrate"]]
    assert len(migrate) == 1 and agx[migrate[0]]["restart"] == "no"
    for name, svc in agx.items():
        if name not in migrate:
            wait = svc["depends_on"][migrate[0]]["condition"]
            assert wait == "service_completed_successfully", name


def test_compose_mounts_files_that_exist_and_grafana_finds_its_dashboard():
    services = _compose()["services"]
    mounts: dict[str, str] = {}
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source
                mounts[target] = source
    datasources = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
    (source,) = _yaml_docs(datasources)[0]["datasources"]
    url = urlsplit(source["url"])
    assert url.hostname in services and f"{url.port}:{url.port}" in services["prometheus"]["ports"]
    providers = DEPLOY / "grafana" / "provisioning" / "dashboards" / "agx.yaml"
    (provider,) = _yaml_docs(providers)[0]["providers"]
    folder = mounts[provider["options"]["path"]]
    assert (DEPLOY / folder / DASHBOARD.name).is_file()
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


def test_prometheus_config_passes_promtool():
    done = subprocess.run(
        [_promtool(), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_builds_one_slim_non_root_image_that_stops_on_sigterm():
    bases = _base_images()
    assert bases and all(b.startswith("python:") and "-slim" in b for b in bases), bases
    last = dict(_last_stage())
    user = last["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric non-root uid (runAsNonRoot checks it)"
    for spec in _pod_specs().values():
        assert spec["securityContext"]["runAsUser"] == int(user)
        assert spec["securityContext"]["runAsNonRoot"] is True
    assert last["STOPSIGNAL"] == "SIGTERM"
    assert last["HEALTHCHECK"].split()[-1] != "NONE" and " CMD " in f" {last['HEALTHCHECK']} "
    assert _exec_form(last["ENTRYPOINT"])[-1] == "agx", "the command picks the process kind"


def test_the_dockerfile_copies_every_file_the_package_installs_from():
    build = _dockerfile()[: max(i for i, (w, _) in enumerate(_dockerfile()) if w == "FROM")]
    copied = {src for w, a in build if w == "COPY" for src in a.split()[:-1]}
    project = _pyproject()
    assert {"pyproject.toml", project["project"]["readme"]} <= copied
    setuptools = project["tool"]["setuptools"]
    for package in setuptools["packages"]:
        folder = ROOT / package.replace(".", "/")
        assert package.split(".")[0] in copied and folder.is_dir(), package
    for package, patterns in setuptools["package-data"].items():
        for pattern in patterns:
            assert list((ROOT / package.replace(".", "/")).glob(pattern)), f"{package} {pattern}"
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ".env" in ignored and ".venv" in ignored, "no secrets or venv in the build context"
    assert not copied & set(ignored)


# --- Kubernetes -------------------------------------------------------------------------


def test_every_manifest_is_listed_in_a_kustomization():
    listed = set(_kustomization_resources(K8S))
    listed |= set(_kustomization_resources(K8S / "keda"))
    listed |= set(_kustomization_resources(K8S / "hpa"))
    files = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files == listed


def test_kubernetes_manifests_validate_against_the_kubernetes_schema():
    kinds = set()
    for obj in _k8s_objects():
        kinds.add(obj["kind"])
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: test_keda_scales_the_workers_on_the_execution_queue
        try:
            kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}")
    expected = {"Deployment", "Service", "Job", "ConfigMap", "Secret", "PodDisruptionBudget"}
    assert expected | {"ScaledObject", "HorizontalPodAutoscaler"} <= kinds


def _labels_select(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_kubernetes_selectors_pick_the_right_pods():
    deployments = _by_name("Deployment")
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert _labels_select(selector, deployment["spec"]["template"]["metadata"]["labels"])
        others = [d for n, d in deployments.items() if n != name]
        assert not any(
            _labels_select(selector, d["spec"]["template"]["metadata"]["labels"]) for d in others
        ), f"{name}'s selector picks another Deployment's pods"
    (service,) = _k8s("Service")
    picked = [
        n
        for n, d in deployments.items()
        if _labels_select(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
    ]
    assert [_agx_containers()[n]["args"][0] for n in picked] == ["api"]
    api_port = _parse(_agx_containers()[picked[0]]["args"])[1]["port"]
    assert service["spec"]["ports"][0]["port"] == api_port
    for budget in _k8s("PodDisruptionBudget"):
        selector = budget["spec"]["selector"]["matchLabels"]
        assert any(
            _labels_select(selector, d["spec"]["template"]["metadata"]["labels"])
            for d in deployments.values()
        ), budget["metadata"]["name"]


def test_settings_name_the_in_cluster_api_service():
    (service,) = _k8s("Service")
    config = _by_name("ConfigMap")["agx-config"]["data"]
    settings = Settings.from_env(config)
    api_url = urlsplit(settings.api_url)
    assert api_url.hostname == service["metadata"]["name"]
    assert api_url.port == service["spec"]["ports"][0]["port"]
    assert service["metadata"]["name"] in settings.allowed_hosts
    compose = Settings.from_env(_agx_services()["workers"]["environment"])
    assert urlsplit(compose.api_url).hostname in _compose()["services"]
    assert urlsplit(compose.api_url).hostname in compose.allowed_hosts


def _workers_deployment() -> str:
    (name,) = [n for n, c in _agx_containers().items() if c["args"][0] == "workers"]
    return name


def test_keda_scales_the_workers_on_the_execution_queue():
    (scaled,) = _k8s("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == _workers_deployment()
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq" and trigger["metadata"]["mode"] == "QueueLength"
    queue = Settings.from_env(_by_name("ConfigMap")["agx-config"]["data"]).queue
    assert trigger["metadata"]["queueName"] == queue
    assert int(trigger["metadata"]["value"]) >= 1
    auth = _by_name("TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    secrets = _by_name("Secret")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["key"] in secrets[ref["name"]]["stringData"]
        assert ref["key"] == "AGX_BROKER_URL" and ref["parameter"] == "host"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


def test_the_hpa_alternative_scales_the_same_workers():
    (hpa,) = _k8s("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", _workers_deployment())
    (scaled,) = _k8s("ScaledObject")
    assert hpa["metadata"]["name"] == scaled["metadata"]["name"], "one or the other, not both"


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed here (test_every_manifest_is_listed_... stands in)")
    done = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.mark.parametrize("component", [None, "keda", "hpa"])
def test_kustomize_builds_the_base_with_each_autoscaler(tmp_path, component):
    shutil.copytree(K8S, tmp_path / "k8s")
    if component:
        with (tmp_path / "k8s" / "kustomization.yaml").open("a", encoding="utf-8") as handle:
            handle.write(f"components: [{component}]\n")
    built = _kustomize(tmp_path / "k8s")
    listed = _kustomization_resources(tmp_path / "k8s")
    assert len(built) == sum(len(_yaml_docs(path)) for path in listed)
    namespaced = [o for o in built if o["kind"] != "Namespace"]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"agx"}
    images = {
        c["image"]
        for o in built
        if o["kind"] in ("Deployment", "Job")
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    assert images == {f"{_kustomize_image_name()}:latest"}


# --- Grafana ----------------------------------------------------------------------------

#: PromQL words that are neither functions nor series.
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_WORDS |= {"and", "or", "unless", "offset", "inf", "nan"}
#: Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up": {"job", "instance"}}


def _dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def _promql_parts(expr: str) -> tuple[set[str], set[str]]:
    """(series named, label names used) of a PromQL expression or Grafana label_values()."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    labels = {
        label.strip()
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", text)
        for label in group.split(",")
    }
    labels |= {
        m for block in re.findall(r"\{([^}]*)\}", text) for m in re.findall(r"(\w+)\s*[=!]", block)
    }
    values = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", text)
    if values:
        return {values.group(1)}, labels | {values.group(2)}
    text = re.sub(r"\b(?:by|without)\s*\([^)]*\)|\{[^}]*\}|\[[^\]]*\]", " ", text)
    series = {
        m.group(1)
        for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)\s*(\(?)", text)
        if not m.group(2) and m.group(1).lower() not in PROMQL_WORDS
    }
    return series, labels - {""}


def test_dashboard_queries_use_only_metrics_and_labels_the_code_exports():
    known = {**_exported_metrics(), **PROMETHEUS_SERIES}
    for expr in _dashboard_queries():
        series, labels = _promql_parts(expr)
        assert series, f"no series in {expr}"
        assert series <= set(known), f"{expr}: {sorted(series - set(known))} are not exported"
        offered = set().union(*(known[name] for name in series))
        assert labels <= offered, f"{expr}: labels {sorted(labels - offered)} do not exist"
        if "histogram_quantile" in expr:
            assert all(name.endswith("_bucket") for name in series) and "le" in labels, expr


def test_dashboard_shows_what_the_issue_asks_for():
    used = set().union(*(_promql_parts(expr)[0] for expr in _dashboard_queries()))
    wanted = {
        "agx_executions_total",  # executions by status
        "agx_execution_duration_seconds_bucket",  # duration percentiles
        "agx_execution_cost_usd_total",  # cost
        "agx_slots_in_use",  # slots in use ...
        "agx_slots_capacity",  # ... vs capacity
        "agx_executions_waiting",  # waiting
        "agx_dispatch_latency_seconds_bucket",  # dispatch latency
        "agx_scheduler_lag_seconds_bucket",  # scheduler lag
    }
    assert wanted <= used, sorted(wanted - used)
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"]
    for panel in board["panels"]:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", "the data source is a variable"


def test_dashboard_queries_are_valid_promql(tmp_path):
    concrete = {"$__rate_interval": "1m", "$__range": "6h", "$__interval": "1m", "$agent": ".*"}
    rules = []
    for n, expr in enumerate(q for q in _dashboard_queries() if not q.startswith("label_values")):
        for variable, value in concrete.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"agx:dashboard_query_{n}", "expr": expr})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [_promtool(), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
