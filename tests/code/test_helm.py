"""The Helm chart (deploy/helm/tickguard), rendered by a real helm and checked strictly against the
Kubernetes API types by scripts/k8s-validate, without a cluster (both built by `make k8s`).

The validator is tested too: each kind of error it exists to catch (unknown field, duplicated field,
wrong type, missing required field, unknown kind, bad name, selector not matching its pod template) is
put into a valid rendered object and must make it fail, naming the field.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests._deps import require

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "tickguard"
SHARDED_VALUES = CHART / "ci" / "sharded-values.yaml"
K8S_BIN = ROOT / ".k8s" / "bin"
KUBE_VERSION = "1.34.0"  # the k8s.io/api version the validator decodes against (scripts/k8s-validate/go.mod)
LATEST_BENCH = ROOT / "benchmarks" / "results" / "latest.json"


def tool(name: str) -> str:
    """A binary from `make k8s` (.k8s/bin) or PATH; missing -> skip locally, fail under CI=true."""
    path = K8S_BIN / name
    found = str(path) if os.access(path, os.X_OK) else shutil.which(name)
    require(found is not None, f"{name} not found in {K8S_BIN} or PATH: run `make k8s`")
    return found  # type: ignore[return-value]


def helm_template(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`helm template tg deploy/helm/tickguard <args>` for the Kubernetes version the validator knows."""
    return subprocess.run(
        [tool("helm"), "template", "tg", str(CHART), "--kube-version", KUBE_VERSION, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


def validate(manifest: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the strict validator on a manifest (written to a file, as helm output would be)."""
    path = tmp_path / "manifest.yaml"
    path.write_text(manifest)
    return subprocess.run([tool("k8s-validate"), str(path)], capture_output=True, text=True, timeout=60)


def objects(manifest: str) -> list[dict]:
    """The rendered objects (documents that are not empty)."""
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def find(docs: list[dict], kind: str, name_suffix: str) -> dict:
    """The one object of `kind` whose name ends with `name_suffix`."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{kind} *{name_suffix}: found {[d['metadata']['name'] for d in found]}"
    return found[0]


def containers(pod_spec: dict) -> dict[str, dict]:
    """Every container of a pod spec (init containers too) by name."""
    return {c["name"]: c for c in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]}


def env_of(container: dict) -> dict[str, dict]:
    """A container's env entries by name."""
    return {entry["name"]: entry for entry in container.get("env", [])}


@pytest.fixture(scope="module")
def default_manifest() -> str:
    return helm_template().stdout


@pytest.fixture(scope="module")
def sharded_manifest() -> str:
    return helm_template("-f", str(SHARDED_VALUES)).stdout


# ---- the rendered chart is valid ---------------------------------------------------------------------


@pytest.mark.parametrize("values", ["default", "sharded"])
def test_chart_renders_objects_the_api_types_accept(values, default_manifest, sharded_manifest, tmp_path):
    manifest = default_manifest if values == "default" else sharded_manifest
    result = validate(manifest, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(objects(manifest))
    assert f"{count} objects, 0 invalid" in result.stdout
    assert count >= 20  # every component rendered, not an empty stream


@pytest.mark.parametrize("values", [[], ["-f", str(SHARDED_VALUES)]], ids=["default", "sharded"])
def test_chart_passes_helm_lint_strict(values):
    result = subprocess.run(
        [tool("helm"), "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *values],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_default_chart_serves_every_bundled_model(default_manifest):
    docs = objects(default_manifest)
    api = find(docs, "Deployment", "-api")
    pod = api["spec"]["template"]["spec"]
    container = containers(pod)["api"]
    bundled = sorted(
        path.stem
        for path in (ROOT / "detectors").glob("*.toml")
        if (ROOT / "models" / path.stem / "production").exists()
    )
    assert bundled, "no bundled production model found under models/"
    assert sorted(env_of(container)["TICKGUARD_DETECTORS"]["value"].split(",")) == bundled
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    hpa = find(docs, "HorizontalPodAutoscaler", "-api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": api["metadata"]["name"],
    }
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in api["spec"]  # the HPA owns the replica count
    # The models come from the models image into the volume the API reads.
    assert containers(pod)["models"]["volumeMounts"][0]["name"] == "models"


def test_sharded_chart_runs_one_kapacitor_per_shard_with_its_agent(sharded_manifest):
    docs = objects(sharded_manifest)
    sts = find(docs, "StatefulSet", "-kapacitor")
    assert sts["spec"]["replicas"] == 4
    pod = sts["spec"]["template"]["spec"]
    parts = containers(pod)
    agent, kapacitor, tasks = parts["agent"], parts["kapacitor"], parts["tasks"]
    # The agent is a native sidecar (an init container that keeps running), listening before Kapacitor starts.
    assert agent["restartPolicy"] == "Always" and agent in pod["initContainers"]
    assert "startupProbe" in agent
    # The socket is shared through an emptyDir mounted by both.
    socket_volume = next(v for v in pod["volumes"] if v["name"] == "udf-socket")
    assert "emptyDir" in socket_volume
    for container in (agent, kapacitor):
        assert {"name": "udf-socket", "mountPath": "/var/run/tickguard"} in container["volumeMounts"]
    # Each shard learns its index from the pod and filters its backfill to its own points.
    for container in (agent, tasks):
        shard = env_of(container)["TICKGUARD_SHARD"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert shard == "metadata.labels['apps.kubernetes.io/pod-index']"
        assert env_of(container)["TICKGUARD_SHARDS"]["value"] == "4"
    assert env_of(agent)["TICKGUARD_BACKFILL_WHERE"]["value"] == "\"shard\" = '$(TICKGUARD_SHARD)'"
    # InfluxDB pushes each shard's subscription to the pod's own DNS name.
    hostname = env_of(kapacitor)["KAPACITOR_HOSTNAME"]["value"]
    assert hostname.startswith("$(POD_NAME).") and sts["spec"]["serviceName"] in hostname
    headless = find(docs, "Service", "-kapacitor-headless")
    assert headless["spec"]["clusterIP"] == "None"
    script = find(docs, "ConfigMap", "-kapacitor")["data"]["deploy-tasks.sh"]
    assert '--shard "$TICKGUARD_SHARD" --shards "$TICKGUARD_SHARDS"' in script


def test_every_tickguard_variable_the_chart_sets_is_read_by_the_code(default_manifest, sharded_manifest):
    """A misspelt TICKGUARD_* name would be ignored silently in the pod: each must be read in src/."""
    names = set()
    for doc in objects(default_manifest) + objects(sharded_manifest):
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        for container in containers(pod).values() if pod else ():
            names |= {name for name in env_of(container) if name.startswith("TICKGUARD_")}
    assert len(names) >= 10
    source = "\n".join(path.read_text() for path in (ROOT / "src" / "tickguard").rglob("*.py"))
    assert sorted(name for name in names if f'"{name}"' not in source) == []


@pytest.mark.parametrize("values", ["default", "sharded"])
def test_the_commands_the_pods_run_parse_with_the_cli(values, default_manifest, sharded_manifest):
    """The agent's command and the tasks sidecar's `tickguard deploy` line are valid tickguard commands."""
    import shlex

    from tickguard.cli import build_parser

    docs = objects(default_manifest if values == "default" else sharded_manifest)
    sts = find(docs, "StatefulSet", "-kapacitor")
    agent = containers(sts["spec"]["template"]["spec"])["agent"]
    assert agent["command"][0] == "tickguard"
    parser = build_parser()
    assert str(parser.parse_args(agent["command"][1:]).socket) == "/var/run/tickguard/udf.sock"
    script = find(docs, "ConfigMap", "-kapacitor")["data"]["deploy-tasks.sh"]
    (line,) = [
        line.strip().rstrip("|").strip()
        for line in script.splitlines()
        if line.strip().startswith("tickguard deploy")
    ]
    words = shlex.split(
        line.replace("$kapacitor", "http://127.0.0.1:9092")
        .replace("$detector", "fraud")
        .replace("$TICKGUARD_SHARDS", "4")
        .replace("$TICKGUARD_SHARD", "1")
    )
    args = parser.parse_args(words[1:])
    assert args.detectors == ["fraud"] and args.kapacitor_url == "http://127.0.0.1:9092"
    if values == "sharded":
        assert (args.shard, args.shards) == (1, 4)


def test_single_shard_needs_no_shard_filter(default_manifest):
    docs = objects(default_manifest)
    sts = find(docs, "StatefulSet", "-kapacitor")
    assert sts["spec"]["replicas"] == 1
    assert "TICKGUARD_BACKFILL_WHERE" not in env_of(containers(sts["spec"]["template"]["spec"])["agent"])
    assert "--shard" not in find(docs, "ConfigMap", "-kapacitor")["data"]["deploy-tasks.sh"]


def test_refuses_zero_shards():
    result = helm_template("--set", "shards=0", check=False)
    assert result.returncode != 0
    assert "shards must be >= 1, got 0" in result.stderr


# ---- secrets -----------------------------------------------------------------------------------------


def secret_refs(docs: list[dict]) -> set[tuple[str, str]]:
    """(secret name, key) of every secretKeyRef in the rendered pods."""
    refs = set()
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        if pod:
            for container in containers(pod).values():
                for entry in container.get("env", []):
                    ref = entry.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        refs.add((ref["name"], ref["key"]))
    return refs


def test_existing_secret_is_used_and_none_is_rendered(sharded_manifest):
    docs = objects(sharded_manifest)
    assert not [d for d in docs if d["kind"] == "Secret"]
    refs = secret_refs(docs)
    assert {name for name, _ in refs} == {"tickguard-credentials"}
    assert {key for _, key in refs} >= {
        "influxdb-admin-password",
        "grafana-admin-password",
        "tickguard-admin-token",
    }


def test_generated_secret_is_random_and_holds_every_referenced_key(default_manifest):
    docs = objects(default_manifest)
    secret = find(docs, "Secret", "-auth")
    assert {key for _, key in secret_refs(docs)} <= set(secret["data"])
    again = find(objects(helm_template().stdout), "Secret", "-auth")
    for key in (
        "influxdb-admin-password",
        "influxdb-reader-password",
        "grafana-admin-password",
        "tickguard-admin-token",
    ):
        value = base64.b64decode(secret["data"][key]).decode()
        assert len(value) >= 32 and value != base64.b64decode(again["data"][key]).decode(), key


def test_values_hold_no_credentials():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    text = json.dumps(values).lower()
    assert "password" not in text and "token" not in text
    assert values["auth"] == {"existingSecret": ""}


# ---- the same provisioning as compose ----------------------------------------------------------------


def test_provisioning_is_compose_files_unchanged(default_manifest):
    docs = objects(default_manifest)
    dashboards = find(docs, "ConfigMap", "-grafana-dashboards")["data"]
    files = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
    assert sorted(dashboards) == [path.name for path in files]
    for path in files:
        assert dashboards[path.name] == path.read_text().rstrip("\n")
    provisioning = find(docs, "ConfigMap", "-grafana-provisioning")["data"]
    datasource = (
        (ROOT / "grafana" / "provisioning" / "datasources" / "influxdb.yaml").read_text().rstrip("\n")
    )
    influx = find(docs, "Service", "-influxdb")["metadata"]["name"]
    assert provisioning["datasources-influxdb.yaml"] == datasource.replace(
        "http://influxdb:8086", f"http://{influx}:8086"
    )
    chronograf = find(docs, "ConfigMap", "-chronograf-resources")["data"]
    for path in (ROOT / "compose" / "chronograf" / "resources").iterdir():
        assert chronograf[path.name] == path.read_text().rstrip("\n")
    init = find(docs, "ConfigMap", "-influxdb-init")["data"]
    for path in (ROOT / "compose" / "influxdb" / "init").iterdir():
        assert init[path.name] == path.read_text().rstrip("\n")
    kapacitor = find(docs, "ConfigMap", "-kapacitor")["data"]
    assert kapacitor["kapacitor.conf"] == (
        ROOT / "compose" / "kapacitor" / "kapacitor.conf"
    ).read_text().rstrip("\n")


# ---- resources from the benchmarks -------------------------------------------------------------------


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number (cores, or bytes for Mi/Gi)."""
    text = str(value)
    for suffix, factor in (("m", 1e-3), ("Mi", 2**20), ("Gi", 2**30)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_requests_cover_the_measured_cpu_and_rss():
    """The requests are at least what benchmarks/results/latest.json measured at 10,191 points/s."""
    run = json.loads(LATEST_BENCH.read_text())["configs"]["tickguard"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    measured = {
        "influxdb": (run["sustained"]["cpu_cores"]["influxd"], run["rss_mb_servers"]["influxd"]),
        "kapacitor": (run["sustained"]["cpu_cores"]["kapacitord"], run["rss_mb_servers"]["kapacitord"]),
        "agent": (run["sustained"]["cpu_cores"]["udf"], run["rss_mb"]["udf"]),
        "api": (run["sustained"]["cpu_cores"]["api"], run["rss_mb"]["api"]),
    }
    # The API's figures hold per gunicorn worker count: the chart runs as many as the benchmark did.
    assert values["api"]["workers"] == run["api_workers"]
    for component, (cores, rss_mb) in measured.items():
        resources = values[component]["resources"]
        assert quantity(resources["requests"]["cpu"]) >= cores, component
        assert quantity(resources["requests"]["memory"]) >= rss_mb * 1e6, component
        assert quantity(resources["limits"]["memory"]) > quantity(resources["requests"]["memory"]), component


# ---- network policies --------------------------------------------------------------------------------


def test_every_pod_is_isolated_and_the_api_calls_nothing(default_manifest):
    docs = objects(default_manifest)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    covered = {p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in policies}
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert {w["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for w in workloads} == covered
    for policy in policies:
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    api = next(p for p in policies if p["metadata"]["name"].endswith("-api"))
    assert "egress" not in api["spec"]
    # Only Kapacitor pods (their agents) reach the API.
    (rule,) = api["spec"]["ingress"]
    assert [peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in rule["from"]] == [
        "kapacitor"
    ]
    grafana = next(p for p in policies if p["metadata"]["name"].endswith("-grafana"))
    assert grafana["spec"]["ingress"] == []  # nobody from outside unless networkPolicy.uiFrom says so


# ---- the validator catches each kind of error --------------------------------------------------------


def mutated(manifest: str, change) -> str:
    """The API Deployment of `manifest` alone, with `change(deployment)` applied, as YAML."""
    deployment = copy.deepcopy(find(objects(manifest), "Deployment", "-api"))
    change(deployment)
    return yaml.safe_dump(deployment)


def api_container(deployment: dict) -> dict:
    return containers(deployment["spec"]["template"]["spec"])["api"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: api_container(d).update(imagePullPolicyy="Always"), 'unknown field "spec.template.spec.containers[0].imagePullPolicyy"'),
        (lambda d: api_container(d)["ports"][0].update(containerPort="eight thousand"), "cannot unmarshal string into Go struct field ContainerPort"),
        (lambda d: d["spec"].update(replicas="two"), "cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas"),
        (lambda d: api_container(d).pop("name"), "spec.template.spec.containers[0].name: required field is missing"),
        (lambda d: api_container(d)["readinessProbe"]["httpGet"].pop("port"), "readinessProbe.httpGet.port: required field is missing"),
        (lambda d: d["spec"].pop("selector"), "spec.selector: required field is missing"),
        (lambda d: d.update(apiVersion="extensions/v1beta1"), "unknown apiVersion/kind extensions/v1beta1 Deployment"),
        (lambda d: d["metadata"].update(name="Tickguard_API"), 'metadata.name "Tickguard_API"'),
        (lambda d: d["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/component": "kapacitor"}), "does not match spec.template.metadata.labels"),
    ],
    ids=["unknown-field", "wrong-type-int32", "wrong-type-replicas", "missing-container-name", "missing-probe-port", "missing-selector", "unknown-kind", "bad-name", "selector-mismatch"],
)  # fmt: skip
def test_validator_rejects(change, message, default_manifest, tmp_path):
    result = validate(mutated(default_manifest, change), tmp_path)
    assert result.returncode == 1, result.stdout
    assert message in result.stdout, result.stdout
    assert "1 objects, 1 invalid" in result.stdout


def test_validator_rejects_a_duplicated_field(default_manifest, tmp_path):
    text = mutated(default_manifest, lambda d: None).replace(
        "kind: Deployment\n", "kind: Deployment\nkind: Deployment\n"
    )
    result = validate(text, tmp_path)
    assert result.returncode == 1
    assert "already set in map" in result.stdout or "duplicate" in result.stdout.lower(), result.stdout


def test_validator_accepts_the_unmutated_object(default_manifest, tmp_path):
    result = validate(mutated(default_manifest, lambda d: None), tmp_path)
    assert result.returncode == 0, result.stdout
