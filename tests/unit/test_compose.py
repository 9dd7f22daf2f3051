"""compose/: the Docker Compose stack, its image and the Grafana provisioning, checked as data.

There is no Docker engine on the build machines, so the stack is validated by parsing: the YAML
and JSON files are read and their values asserted (services, KRaft settings, listeners, ports,
volumes, depends_on, commands, env, GPU reservation, datasource and dashboard wiring, the
Dockerfile's install line). Where a Compose CLI is installed, `config` is run as an extra check.

The CLI is not imported: the subcommand names the services run are listed here on purpose.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
GRAFANA_DIR = COMPOSE_DIR / "grafana"
DATASOURCE_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "clickhouse.yml"
PROVIDER_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "revenue.json"
MIGRATIONS_DIR = ROOT / "llm_auction" / "infra" / "migrations"
DECISIONS_TABLE = "llm_auction.rollout_decisions"

INFRA = {"kafka", "clickhouse", "grafana"}
PIPELINE = {"migrate", "responder", "responder-cpu", "user-sim", "sink", "stream-app", "rollout-controller", "trainer", "replay"}
# `llm-auction` subcommands the services may run (`world` already exists in llm_auction/cli/world.py).
CLI_SUBCOMMANDS = {"serve", "replay", "warehouse", "topics", "world"}
SERVE_TARGETS = {"responder", "user-sim", "sink", "stream-app", "rollout-controller", "trainer"}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
EXPECTED_HOST_PORTS = {9092, 8123, 9000, 3000}

VIEWS = {
    "llm_auction.revenue_per_minute": {
        "minute", "policy_version", "queries", "exposures", "clicks", "revenue",
        "ads_per_answer", "format_error_rate", "ctr",
    },
    "llm_auction.revenue_by_policy": {
        "policy_version", "queries", "exposures", "clicks", "revenue", "revenue_per_query",
        "ads_per_answer", "format_error_rate", "ctr",
    },
}
SQL_KEYWORDS = {
    "select", "from", "where", "and", "or", "not", "as", "order", "by", "group", "asc", "desc",
    "in", "distinct", "limit", "having", "with", "is", "null", "final",
}


# --------------------------------------------------------------------------------------------
# helpers

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$\$")


def interpolate(value: str) -> str:
    """Compose-style ``${VAR:-default}`` / ``${VAR-default}`` / ``${VAR}`` with every VAR unset.

    The stack must come up with no .env file, so a ``${VAR}`` without a default (which would be
    empty) or a required ``${VAR:?msg}`` is an error here.
    """

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3)
        if op in ("-", ":-"):
            return default
        raise AssertionError(f"${{{name}}} has no default: the stack would not start without a .env")

    return _VAR.sub(sub, value)


def _walk(obj):
    if isinstance(obj, dict):
        return {k: _walk(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_walk(v) for v in obj]
    if isinstance(obj, str):
        return interpolate(obj)
    return obj


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def short_volumes(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each volume entry (short or long syntax)."""
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            mode = "ro" if v.get("read_only") else "rw"
            out.append((v.get("source", ""), v["target"], mode))
            continue
        parts = v.split(":")
        if len(parts) == 2:
            out.append((parts[0], parts[1], "rw"))
        else:
            out.append((parts[0], parts[1], parts[2]))
    return out


def is_named_volume(source: str) -> bool:
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def published_ports(service: dict) -> list[tuple[int, int]]:
    """(host port, container port) for each published port."""
    out = []
    for p in service.get("ports") or []:
        if isinstance(p, dict):
            out.append((int(p["published"]), int(p["target"])))
            continue
        spec = str(p).split("/")[0]
        parts = spec.split(":")
        assert len(parts) in (2, 3), f"port {p!r} is not host:container (published)"
        out.append((int(parts[-2]), int(parts[-1])))
    return out


def command_words(service: dict) -> list[list[str]]:
    """The ``llm-auction`` argument lists a service runs.

    Exec form with the image's entrypoint: the command list itself. Shell form (entrypoint a
    shell): every ``llm-auction ...`` invocation in the script, which must start with one.
    """
    cmd = service.get("command")
    entry = service.get("entrypoint")
    if entry is None:
        assert isinstance(cmd, list), "use the exec (list) form for the command"
        return [[str(c) for c in cmd]]
    entry = entry if isinstance(entry, list) else entry.split()
    assert Path(entry[0]).name in ("sh", "bash"), f"unexpected entrypoint {entry}"
    script = " ".join(cmd) if isinstance(cmd, list) else str(cmd)
    assert script.strip().startswith("llm-auction "), f"script does not start with llm-auction: {script!r}"
    return [m.split() for m in re.findall(r"\bllm-auction((?:\s+[A-Za-z0-9_./=-]+)+)", script)]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    return _walk(raw)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def datasource() -> dict:
    doc = yaml.safe_load(DATASOURCE_FILE.read_text())
    assert doc["apiVersion"] == 1
    (ds,) = [d for d in doc["datasources"] if d["type"] == "grafana-clickhouse-datasource"]
    return ds


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text())


# --------------------------------------------------------------------------------------------
# the interpolation helper itself


def test_interpolate_defaults_and_missing():
    assert interpolate("${A:-x}:${B-y}/$$") == "x:y/$"
    with pytest.raises(AssertionError):
        interpolate("http://${NO_DEFAULT}@h")


# --------------------------------------------------------------------------------------------
# services


def test_expected_services_exist(services):
    assert set(services) == INFRA | PIPELINE


def test_every_service_has_image_or_build(services):
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), name
        if "build" in svc:
            b = svc["build"]
            assert (COMPOSE_DIR / b["context"]).resolve() == ROOT, name
            assert (COMPOSE_DIR / b["context"] / b["dockerfile"]).resolve() == DOCKERFILE, name


def test_pipeline_services_share_one_image(services):
    lean = {n for n in PIPELINE if n != "responder"}
    assert {services[n]["image"] for n in lean} == {"llm-auction:latest"}
    assert services["responder"]["image"] != "llm-auction:latest"  # the gpu build has its own tag


def test_kafka_is_kraft(services):
    assert not any("zookeeper" in n or "zookeeper" in str(s.get("image", "")) for n, s in services.items())
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = env_of(kafka)
    assert not any("ZOOKEEPER" in k for k in env)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    # the quorum is this node, on the controller listener
    voter_id, voter_addr = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")
    assert voter_id == env["KAFKA_NODE_ID"]
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    ctrl = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert listeners[ctrl] == ":" + voter_addr.split(":")[1]
    # CLUSTER_ID: a Kafka Uuid, base64url of 16 bytes without padding
    cid = env["CLUSTER_ID"]
    assert len(cid) == 22 and len(base64.urlsafe_b64decode(cid + "==")) == 16
    # every replication factor fits a single node
    for k, v in env.items():
        if k.endswith(("REPLICATION_FACTOR", "MIN_ISR")):
            assert v == "1", k


def test_kafka_listeners_serve_containers_and_host(services):
    kafka = services["kafka"]
    env = env_of(kafka)
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols)
    assert set(advertised) <= set(listeners)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    # containers: the bootstrap the services use is an advertised listener
    bootstraps = {env_of(services[n])["LLMA_KAFKA_BOOTSTRAP"] for n in PIPELINE}
    assert bootstraps == {"kafka:9092"}
    assert "kafka:9092" in advertised.values()
    # host: a published port lands on a listener advertised as localhost:<that host port>
    ((host_port, container_port),) = published_ports(kafka)
    (host_listener,) = [n for n, addr in listeners.items() if addr == f":{container_port}"]
    assert advertised[host_listener] == f"localhost:{host_port}"


def test_clickhouse_service(services):
    ch = services["clickhouse"]
    assert ch["image"].startswith("clickhouse/clickhouse-server:")
    env = env_of(ch)
    assert env["CLICKHOUSE_USER"] and env["CLICKHOUSE_PASSWORD"]
    assert sorted(c for _, c in published_ports(ch)) == [8123, 9000]
    nofile = ch["ulimits"]["nofile"]
    assert int(nofile["soft"]) >= 262144 and int(nofile["hard"]) >= 262144
    assert any(t == "/var/lib/clickhouse" and is_named_volume(s) for s, t, _ in short_volumes(ch))


def test_infra_healthchecks(services):
    for name in ("kafka", "clickhouse", "grafana"):
        hc = services[name].get("healthcheck")
        assert hc and hc.get("test"), name
        assert hc.get("disable") is not True, name
    kafka_test = " ".join(services["kafka"]["healthcheck"]["test"])
    assert "kafka-topics.sh" in kafka_test and "--list" in kafka_test
    port = re.search(r"--bootstrap-server\s+localhost:(\d+)", kafka_test).group(1)
    listeners = env_of(services["kafka"])["KAFKA_LISTENERS"]
    assert f"://:{port}" in listeners
    ch_test = " ".join(services["clickhouse"]["healthcheck"]["test"])
    assert ":8123/ping" in ch_test or "clickhouse-client" in ch_test


def test_responder_variants(services):
    gpu = services["responder"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and d["count"] == 1 and "gpu" in d["capabilities"] for d in devices)
    assert gpu["build"]["args"]["EXTRAS"] == "gpu"
    (words,) = command_words(gpu)
    assert words[:2] == ["serve", "responder"]
    assert words[words.index("--backend") + 1] == "vllm"
    assert words[words.index("--model") + 1].startswith("/models/")

    cpu = services["responder-cpu"]
    assert cpu["profiles"] == ["cpu"]
    assert "deploy" not in cpu
    assert "args" not in cpu["build"] or "gpu" not in str(cpu["build"]["args"].get("EXTRAS", ""))
    (words,) = command_words(cpu)
    assert words[:2] == ["serve", "responder"]
    assert words[words.index("--backend") + 1] == "transformers"
    assert words[words.index("--model") + 1].startswith("/models/")


def test_profiles(services):
    assert services["replay"]["profiles"] == ["replay"]
    assert services["trainer"]["profiles"] == ["learn"]
    always = {"kafka", "clickhouse", "grafana", "migrate", "user-sim", "sink", "stream-app", "rollout-controller"}
    for name in always:
        assert not services[name].get("profiles"), name


def test_published_ports_expected_and_distinct(services):
    host_ports = [h for svc in services.values() for h, _ in published_ports(svc)]
    assert len(host_ports) == len(set(host_ports)), f"colliding host ports: {host_ports}"
    assert set(host_ports) == EXPECTED_HOST_PORTS
    assert [c for _, c in published_ports(services["grafana"])] == [3000]
    # nothing of the pipeline is published
    for name in PIPELINE:
        assert not services[name].get("ports"), name


def test_named_volumes_declared_and_used(compose, services):
    declared = set(compose.get("volumes") or {})
    used = {s for svc in services.values() for s, _, _ in short_volumes(svc) if is_named_volume(s)}
    assert used <= declared, f"undeclared volumes: {used - declared}"
    assert declared <= used, f"declared but unused: {declared - used}"
    for name in ("kafka", "clickhouse", "grafana"):
        assert any(is_named_volume(s) for s, _, _ in short_volumes(services[name])), name


def test_depends_on_targets_and_conditions(services):
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for target, spec in deps.items():
            assert target in services, f"{name} depends on unknown {target}"
            assert target != name
            cond = spec.get("condition", "service_started")
            assert cond in DEPENDS_CONDITIONS, f"{name} -> {target}: {cond}"
            if cond == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits for {target}'s health, which has none"
            if cond == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{target} must be one-shot"
            # a service that always runs must not wait on one that only runs in a profile
            if not svc.get("profiles"):
                assert not services[target].get("profiles"), f"{name} -> {target} (profiled)"


def test_pipeline_waits_for_real_parts(services):
    for name in PIPELINE:
        deps = services[name]["depends_on"]
        assert deps["kafka"]["condition"] == "service_healthy", name
        assert deps["clickhouse"]["condition"] == "service_healthy", name
        if name != "migrate":
            assert deps["migrate"]["condition"] == "service_completed_successfully", name
    assert services["grafana"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"


def test_pipeline_commands_use_known_subcommands(services):
    for name in PIPELINE:
        invocations = command_words(services[name])
        assert invocations, name
        for words in invocations:
            assert words[0] in CLI_SUBCOMMANDS, f"{name}: unknown subcommand {words[0]!r}"
            if words[0] == "serve":
                assert words[1] in SERVE_TARGETS, f"{name}: serve {words[1]!r}"
    assert command_words(services["user-sim"]) == [["serve", "user-sim"]]
    assert command_words(services["sink"]) == [["serve", "sink"]]
    assert command_words(services["stream-app"]) == [["serve", "stream-app"]]
    assert command_words(services["rollout-controller"]) == [["serve", "rollout-controller"]]
    assert command_words(services["trainer"])[0][:2] == ["serve", "trainer"]
    assert env_of(services["stream-app"])["LLMA_IRPO_TRIGGER_ENABLED"] == "false"  # the trigger is opt-in
    assert command_words(services["replay"]) == [["replay", "--split", "test", "--rate", "20", "--loop"]]
    migrate = [w[:2] for w in command_words(services["migrate"])]
    assert migrate[:2] == [["warehouse", "migrate"], ["topics", "create"]]


def test_pipeline_env_and_state(services):
    ch_env = env_of(services["clickhouse"])
    for name in PIPELINE:
        svc = services[name]
        env = env_of(svc)
        assert env["LLMA_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        url = urlsplit(env["LLMA_CLICKHOUSE_URL"])
        assert (url.scheme, url.hostname, url.port) == ("http", "clickhouse", 8123), name
        assert (url.username, url.password) == (ch_env["CLICKHOUSE_USER"], ch_env["CLICKHOUSE_PASSWORD"]), name
        assert env["LLMA_DATA_DIR"] == "/data", name
        vols = {t: (s, m) for s, t, m in short_volumes(svc)}
        assert is_named_volume(vols["/data"][0]), name
        models_src, models_mode = vols["/models"]
        assert models_mode == "ro" and not is_named_volume(models_src), name
    # one shared state volume
    assert len({dict((t, s) for s, t, _ in short_volumes(services[n]))["/data"] for n in PIPELINE}) == 1


def test_compose_cli_config_if_available(tmp_path):
    """`docker compose config` (or the v1 `docker-compose`) when a Compose CLI is installed."""
    profiles = ["--profile", "cpu", "--profile", "gpu", "--profile", "replay", "--profile", "learn"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        cmd = [docker, "compose", "-f", str(COMPOSE_FILE), *profiles, "config", "-q"]
    elif shutil.which("docker-compose"):
        # v1 predates the top-level `name` key of the Compose specification: check the rest.
        doc = yaml.safe_load(COMPOSE_FILE.read_text())
        doc.pop("name", None)
        f = tmp_path / "docker-compose.yml"
        f.write_text(yaml.safe_dump(doc, sort_keys=False))
        cmd = ["docker-compose", "-f", str(f), "--project-directory", str(COMPOSE_DIR), *profiles, "config", "-q"]
    else:
        pytest.skip("no Compose CLI installed")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------------------------
# grafana


def _mounts(svc: dict) -> dict[str, str]:
    return {t: s for s, t, _ in short_volumes(svc)}


def test_grafana_service(services):
    g = services["grafana"]
    assert g["image"].startswith("grafana/grafana:")
    env = env_of(g)
    assert "grafana-clickhouse-datasource" in env["GF_INSTALL_PLUGINS"].split(",")
    mounts = _mounts(g)
    assert (COMPOSE_DIR / mounts["/etc/grafana/provisioning"]).resolve() == (GRAFANA_DIR / "provisioning")
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    dash_dir = str(Path(home).parent)
    assert (COMPOSE_DIR / mounts[dash_dir] / Path(home).name).resolve() == DASHBOARD_FILE


def test_datasource_provisioning(datasource, services):
    assert datasource["uid"]
    jd = datasource["jsonData"]
    assert (jd["host"], int(jd["port"]), jd["protocol"]) == ("clickhouse", 8123, "http")
    assert jd["defaultDatabase"] == "llm_auction"
    # credentials come from Grafana's environment, which compose fills from the server's
    g_env = env_of(services["grafana"])
    ch_env = env_of(services["clickhouse"])
    user_var = re.fullmatch(r"\$\{?(\w+)\}?", jd["username"]).group(1)
    pass_var = re.fullmatch(r"\$\{?(\w+)\}?", datasource["secureJsonData"]["password"]).group(1)
    assert g_env[user_var] == ch_env["CLICKHOUSE_USER"]
    assert g_env[pass_var] == ch_env["CLICKHOUSE_PASSWORD"]


def test_dashboard_provider_points_at_the_mounted_folder(services):
    doc = yaml.safe_load(PROVIDER_FILE.read_text())
    assert doc["apiVersion"] == 1
    (prov,) = doc["providers"]
    assert prov["type"] == "file"
    path = prov["options"]["path"]
    mounts = _mounts(services["grafana"])
    assert (COMPOSE_DIR / mounts[path]).resolve() == DASHBOARD_FILE.parent


def _sql_identifiers(sql: str) -> tuple[set[str], set[str]]:
    """(tables after FROM/JOIN, other bare identifiers) of a query, template parts removed."""
    sql = re.sub(r"\$\{[^}]*\}|\$\w+", " ", sql)
    sql = re.sub(r"'[^']*'", " ", sql)
    tables = set(re.findall(r"\b(?:from|join)\s+([\w.]+)", sql, flags=re.I))
    body = re.sub(r"\b(?:from|join)\s+[\w.]+", " ", sql, flags=re.I)
    aliases = {a.lower() for a in re.findall(r"\bas\s+(\w+)", body, flags=re.I)}
    functions = {f.lower() for f in re.findall(r"\b(\w+)\s*\(", body)}
    words = {w.lower() for w in re.findall(r"\b[A-Za-z_]\w*\b", body)}
    return tables, words - SQL_KEYWORDS - aliases - functions


def _migrations_sql() -> str:
    """Every migration, in order (a later one may replace a view an earlier one created)."""
    return "\n".join(f.read_text() for f in sorted(MIGRATIONS_DIR.glob("*.sql")))


def migration_table_columns(table: str) -> set[str]:
    """The columns of ``CREATE TABLE ... <table> ( ... )`` in the migrations."""
    m = re.search(rf"CREATE TABLE (?:IF NOT EXISTS )?{re.escape(table)}\s*\((.*?)\n\)", _migrations_sql(), flags=re.S)
    assert m, f"no CREATE TABLE {table} in {MIGRATIONS_DIR}"
    return {line.split()[0] for line in m.group(1).splitlines() if line.strip() and not line.strip().startswith("--")}


def migration_view_columns(view: str) -> set[str]:
    """The output columns of the last ``CREATE ... VIEW <view> AS SELECT ... FROM`` in the migrations:
    each select item's alias, or the bare column it is."""
    found = re.findall(rf"CREATE (?:OR REPLACE )?VIEW (?:IF NOT EXISTS )?{re.escape(view)} AS\s*SELECT\s*(.*?)\nFROM", _migrations_sql(), flags=re.S)
    assert found, f"no CREATE VIEW {view} in {MIGRATIONS_DIR}"
    items = [i.strip() for i in found[-1].split(",\n")]
    return {re.split(r"\s+AS\s+", i, flags=re.I)[-1].strip() for i in items}


def test_views_and_decisions_columns_are_the_migrations():
    for view, columns in VIEWS.items():
        assert columns <= migration_view_columns(view), f"{view}: {columns - migration_view_columns(view)} not in the migrations"
    assert {"decided_at", "stable_version", "candidate_version", "candidate_share", "state", "reason", "decided_by"} <= migration_table_columns(DECISIONS_TABLE)


def _targets(dashboard):
    for panel in dashboard["panels"]:
        for t in panel["targets"]:
            yield panel, t


def test_dashboard_identity_and_datasource(dashboard, datasource):
    assert dashboard["uid"] and dashboard["title"] == "LLM-Auction revenue"
    panels = dashboard["panels"]
    assert panels
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["datasource"]["type"] == datasource["type"], panel["title"]
        assert panel["targets"], panel["title"]
    for panel, t in _targets(dashboard):
        assert t["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert t["refId"] and t["rawSql"].strip(), panel["title"]
    for var in dashboard.get("templating", {}).get("list", []):
        if var["type"] == "query":
            assert var["datasource"]["uid"] == datasource["uid"]


def test_dashboard_sql_reads_only_the_views(dashboard):
    queries = [t["rawSql"] for _, t in _targets(dashboard)]
    queries += [v["query"] for v in dashboard.get("templating", {}).get("list", []) if v["type"] == "query"]
    columns = set().union(*VIEWS.values())
    for sql in queries:
        assert set(re.findall(r"\bllm_auction\.\w+", sql)) <= set(VIEWS), sql
        tables, words = _sql_identifiers(sql)
        assert tables and tables <= set(VIEWS), sql
        view_columns = set().union(*(VIEWS[t] for t in tables))
        assert words <= view_columns, f"unknown columns {words - view_columns} in {sql!r}"
        assert words <= columns


def test_dashboard_panels_cover_the_metrics(dashboard):
    kinds = {p["type"] for p in dashboard["panels"]}
    assert {"timeseries", "table"} <= kinds
    per_minute_series = set()
    by_policy = set()
    for panel, t in _targets(dashboard):
        sql = t["rawSql"]
        tables, words = _sql_identifiers(sql)
        if "llm_auction.revenue_per_minute" in tables:
            assert "$__timeFilter(minute)" in sql, panel["title"]
            if panel["type"] == "timeseries":
                # the plugin's time-series format, with the time column named as it expects
                assert t["format"] == 0 and re.search(r"\bminute\s+AS\s+time\b", sql, re.I), panel["title"]
                assert "policy_version" in words, panel["title"]
                per_minute_series |= words
        if "llm_auction.revenue_by_policy" in tables:
            by_policy |= words
    assert {"revenue", "ctr", "ads_per_answer", "format_error_rate"} <= per_minute_series
    assert {"policy_version", "revenue_per_query"} <= by_policy


def test_dashboard_has_a_revenue_per_query_panel_per_version(dashboard):
    (panel,) = [p for p in dashboard["panels"] if p.get("repeat")]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    var = variables[panel["repeat"]]
    assert panel["repeat"] == "policy_version" and var["multi"] and var["includeAll"]  # one panel per selected version
    assert panel["type"] == "timeseries" and "$policy_version" in panel["title"]
    (t,) = panel["targets"]
    sql = t["rawSql"]
    tables, words = _sql_identifiers(sql)
    assert tables == {"llm_auction.revenue_per_minute"}
    assert words <= migration_view_columns("llm_auction.revenue_per_minute")
    assert {"minute", "policy_version", "revenue", "queries"} <= words
    assert re.search(r"revenue.*/\s*nullIf\(queries, 0\) AS revenue_per_query", sql)
    # the repeated panel's own version, not the IN list of the other panels
    assert re.search(r"\bpolicy_version = \$\{policy_version:singlequote\}", sql)
    assert t["format"] == 0 and re.search(r"\bminute\s+AS\s+time\b", sql, re.I) and "$__timeFilter(minute)" in sql


def test_dashboard_annotates_the_rollout_decisions(dashboard, datasource):
    (anno,) = [a for a in dashboard["annotations"]["list"] if a.get("datasource", {}).get("type") == datasource["type"]]
    assert anno["enable"] and anno["name"] == "Rollout decisions"
    assert anno["datasource"]["uid"] == datasource["uid"] and anno["target"]["datasource"]["uid"] == datasource["uid"]
    sql = anno["target"]["rawSql"]
    tables, words = _sql_identifiers(sql)
    assert tables == {DECISIONS_TABLE}
    assert re.search(rf"FROM {DECISIONS_TABLE} FINAL\b", sql)  # a decision recorded twice counts once
    columns = migration_table_columns(DECISIONS_TABLE)
    assert words <= columns, f"unknown columns {words - columns} in {sql!r}"
    # Grafana's annotation fields: time (on the time axis), text, tags; within the dashboard's range
    assert re.search(r"\bdecided_at AS time\b", sql) and re.search(r"\)\s+AS text\b", sql) and re.search(r"\)\s+AS tags\b", sql)
    assert "$__timeFilter(decided_at)" in sql
    assert {"state", "stable_version", "candidate_version", "reason"} <= words


def test_dashboard_layout_has_no_overlaps(dashboard):
    cells = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps at {(x, y)}"
                cells.add((x, y))


# --------------------------------------------------------------------------------------------
# the image


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        full = (buf + line).strip()
        buf = ""
        if full:
            instr, _, rest = full.partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def _pyproject_torch_pin() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'"(torch==[^"]+)"', text).group(1)


def test_dockerfile_base_user_entrypoint():
    ins = dockerfile_instructions()
    names = [i for i, _ in ins]
    assert ins[0] == ("FROM", "python:3.11-slim")
    assert "HEALTHCHECK" not in names
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    entry = [a for i, a in ins if i == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["llm-auction"]
    assert names.index("USER") < names.index("ENTRYPOINT")


def test_dockerfile_installs_from_the_lock_without_embedded_engines():
    ins = dockerfile_instructions()
    args = dict(a.split("=", 1) if "=" in a else (a, None) for i, a in ins if i == "ARG")
    extras_default = (args["EXTRAS"] or "").strip("\"'")
    assert extras_default == "", "the default image installs no extra"
    runs = [a for i, a in ins if i == "RUN"]
    installs = [cmd for r in runs for cmd in re.split(r"&&|;", r) if re.search(r"\bpip install\b", cmd)]
    assert installs
    for cmd in installs:
        assert "-c constraints.txt" in cmd, cmd
        assert "embedded" not in cmd, cmd
    # the package itself, with the EXTRAS build arg
    assert any(re.search(r"\.\[\$\{?EXTRAS\}?\]", r) for r in runs)
    # torch pinned exactly as pyproject and the lock pin it
    pin = _pyproject_torch_pin()
    assert any(pin in cmd for cmd in installs)
    assert pin in (ROOT / "constraints.txt").read_text().splitlines()
    # what the image copies exists
    for i, a in ins:
        if i == "COPY":
            for src in a.split()[:-1]:
                if not src.startswith("--"):
                    assert (ROOT / src).exists(), src


def test_dockerignore_keeps_heavy_things_out():
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    for must in (".venv", "var", ".git", "bench/results", "models"):
        assert must in patterns, must

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)

    for needed in ("pyproject.toml", "constraints.txt", "README.md", "llm_auction/__init__.py", "compose/Dockerfile"):
        assert not ignored(needed), needed
    for heavy in (".venv/bin/python", "var/clickhouse/x", "bench/results/a.json", ".git/HEAD"):
        assert ignored(heavy), heavy
