"""The example deployments under deploy/: YAML syntax, the pieces agree with each other, the
bridge accepts the config they give it, and registration.yaml.j2 renders their registration.

No Kubernetes runs here: what the cluster would do with the manifests is not checked.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest
from ruamel.yaml import YAML

from waldur_bridge.config import Config, ConfigError
from waldur_devenv.testing import BASE_CONFIG

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"


def _load_all(path: Path) -> list[Any]:
    return [doc for doc in YAML(typ="safe", pure=True).load_all(path.read_text()) if doc]


def _manifests() -> dict[str, dict[str, Any]]:
    by_kind: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in _load_all(path):
            assert "kind" in doc and "apiVersion" in doc, path
            by_kind[doc["kind"]] = doc
    return by_kind


def _bridge_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """The config the Deployment's pods run with: the ConfigMap's file plus the Secret's env."""
    manifests = _manifests()
    for key, value in manifests["Secret"]["stringData"].items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "config.yaml"
    path.write_text(manifests["ConfigMap"]["data"]["config.yaml"])
    # As the bridge builds it (mautrix's Bridge uses the module name as the env prefix).
    config = Config(str(path), "", BASE_CONFIG, env_prefix="WALDUR_BRIDGE")
    config.load()
    config.update(save=False)
    return config


def test_kubernetes_manifests_parse_and_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifests = _manifests()
    assert set(manifests) >= {"Secret", "ConfigMap", "Deployment", "Service", "Kustomization"}
    listed = set(manifests["Kustomization"]["resources"])
    assert listed == {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}

    deployment = manifests["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/_matrix/mau/ready",
        "port": "appservice",
    }
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/_matrix/mau/live",
        "port": "appservice",
    }
    assert container["envFrom"] == [
        {"secretRef": {"name": manifests["Secret"]["metadata"]["name"]}}
    ]
    # -n: the config is a read-only ConfigMap; the bridge must not try to rewrite it.
    assert container["command"][-1] == "-n"
    mount = container["volumeMounts"][0]
    assert container["command"][2] == f"{mount['mountPath']}/config.yaml"
    assert (
        pod["spec"]["volumes"][0]["configMap"]["name"]
        == manifests["ConfigMap"]["metadata"]["name"]
    )
    # Longer than the bridge's own bounded stop, so a handover is never cut by SIGKILL.
    from waldur_bridge.__main__ import STOP_TIMEOUT

    assert pod["spec"]["terminationGracePeriodSeconds"] > STOP_TIMEOUT

    service = manifests["Service"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == "appservice"

    config = _bridge_config(tmp_path, monkeypatch)
    assert ports["appservice"] == config["appservice.port"]
    assert ports["metrics"] == config["metrics.listen_port"]
    name = service["metadata"]["name"]
    assert config["appservice.address"] == f"http://{name}:{service_port['port']}"


def _load(path: Path) -> Config:
    config = Config(str(path), "", BASE_CONFIG, env_prefix="WALDUR_BRIDGE")
    config.load()
    config.update(save=False)
    return config


def test_the_bridge_refuses_the_placeholders_and_accepts_the_filled_in_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _bridge_config(tmp_path, monkeypatch)
    with pytest.raises(ConfigError) as refused:
        config.validate()
    secret = _manifests()["Secret"]["stringData"]
    # Each stand-in of the Secret, named with the variable it came from; nothing else.
    assert sorted(p.split(" is a ")[0] for p in refused.value.problems) == [
        "appservice.as_token: the value from WALDUR_BRIDGE_APPSERVICE_AS_TOKEN",
        "appservice.database: the value from WALDUR_BRIDGE_APPSERVICE_DATABASE",
        "appservice.hs_token: the value from WALDUR_BRIDGE_APPSERVICE_HS_TOKEN",
        "waldur.token: the value from WALDUR_BRIDGE_WALDUR_TOKEN",
        "waldur.webhook.secret: the value from WALDUR_BRIDGE_WALDUR_WEBHOOK_SECRET",
    ]
    # Without the Secret (not created), the ConfigMap's own stand-ins are named, with the file.
    for key in secret:
        monkeypatch.delenv(key)
    with pytest.raises(ConfigError) as refused:
        _load(tmp_path / "config.yaml").validate()
    assert len(refused.value.problems) == 5
    assert all("from the config file" in p for p in refused.value.problems)

    for key in secret:
        value = "postgres://bridge:pw@postgresql/bridge" if "DATABASE" in key else key.lower()
        monkeypatch.setenv(key, value)
    config = _load(tmp_path / "config.yaml")
    config.validate()  # raises ConfigError naming every problem
    assert config["appservice.database"].startswith("postgres://")  # several instances need it
    assert config["appservice.hostname"] == "0.0.0.0"
    assert config["waldur.token"] == "waldur_bridge_waldur_token"


def test_registration_template_renders_the_deployment_registration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variables = YAML(typ="safe", pure=True).load((DEPLOY / "registration-vars.yaml").read_text())
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    text = env.from_string((REPO_ROOT / "registration.yaml.j2").read_text()).render(**variables)
    registration = YAML(typ="safe", pure=True).load(text)
    config = _bridge_config(tmp_path, monkeypatch)
    assert registration["url"] == config["appservice.address"]
    assert registration["id"] == config["appservice.id"]
    assert registration["as_token"] == config["appservice.as_token"]
    assert registration["hs_token"] == config["appservice.hs_token"]
    assert registration["sender_localpart"] == config["appservice.bot_username"]
    assert registration["namespaces"]["users"][1]["regex"].endswith(
        config["homeserver.domain"].replace(".", "\\.")
    )


def _unit(path: Path) -> configparser.RawConfigParser:
    # systemd allows repeated keys (EnvironmentFile=); strict=False keeps parsing them.
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def test_systemd_units_and_haproxy_agree() -> None:
    unit = _unit(DEPLOY / "systemd" / "waldur-bridge@.service")
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    exec_start = unit["Service"]["ExecStart"].split()
    assert exec_start[-3:-1] == ["-c", "/etc/waldur-bridge/config.yaml"] and exec_start[-1] == "-n"
    assert unit["Service"]["Restart"] == "always"
    assert int(unit["Service"]["TimeoutStopSec"]) > 30

    ports = []
    for name in ("a", "b"):
        values = {}
        for line in (DEPLOY / "systemd" / f"{name}.env").read_text().splitlines():
            if line and not line.startswith("#"):
                key, value = line.split("=", 1)
                values[key] = value
        ports.append(int(values["WALDUR_BRIDGE_APPSERVICE_PORT"].removeprefix("json::")))
    haproxy = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert "http-check send meth GET uri /_matrix/mau/ready" in haproxy
    servers = [
        line.split()[2] for line in haproxy.splitlines() if line.strip().startswith("server ")
    ]
    assert servers == [f"127.0.0.1:{port}" for port in ports]


@pytest.mark.skipif(
    shutil.which("haproxy") is None
    and os.environ.get("CI", "").strip().lower() not in {"1", "true", "yes"},
    reason="haproxy is not installed (.ci/run installs it)",
)
def test_haproxy_accepts_its_config() -> None:
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_documented_render_command_works_with_what_is_installed(tmp_path: Path) -> None:
    """The command deploy/registration-vars.yaml gives: the bridge alone renders it, equal to
    registration.yaml.j2's rendering; the shipped placeholder tokens are refused."""
    import sys

    vars_file = DEPLOY / "registration-vars.yaml"
    documented = next(
        line for line in vars_file.read_text().splitlines() if "--render-registration" in line
    )
    assert "waldur-bridge --render-registration deploy/registration-vars.yaml" in documented
    command = [sys.executable, "-m", "waldur_bridge", "--render-registration"]
    refused = subprocess.run(
        [*command, str(vars_file)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert refused.returncode == 11, refused.stderr
    assert "as_token is a placeholder" in refused.stderr and "Traceback" not in refused.stderr

    shipped = YAML(typ="safe", pure=True).load(vars_file.read_text())
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    template = env.from_string((REPO_ROOT / "registration.yaml.j2").read_text())
    extras: list[dict[str, Any]] = [
        {},
        {
            "username_prefix": "bridge_",
            "alias_prefix": "w-",
            "encryption_appservice": "yes",
            "msc4190": True,
        },
    ]
    for extra in extras:
        variables = {
            **shipped,
            **extra,
            "as_token": "as-" + "a" * 40,
            "hs_token": "hs-" + "h" * 40,
        }
        filled = tmp_path / "vars.yaml"
        YAML(typ="safe", pure=True).dump(variables, filled)
        result = subprocess.run(
            [*command, str(filled)], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        rendered = YAML(typ="safe", pure=True).load(result.stdout)
        assert rendered == YAML(typ="safe", pure=True).load(template.render(**variables))
        assert rendered["as_token"] == variables["as_token"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vars.yaml"]  # nothing else written


def test_kubernetes_manifests_match_the_kubernetes_schemas() -> None:
    """Every manifest against the API schemas (strict: unknown fields are errors), offline."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    checked = 0
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in _load_all(path):
            if doc["kind"] == "Kustomization":
                continue  # kustomize's own file, not an API object: rendered below
            kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError
            checked += 1
    assert checked == 4
    # The check bites: a misspelt field of the security context is refused.
    deployment = _manifests()["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["allowPrivilegeEscalaton"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)


def test_the_pod_meets_the_restricted_pod_security_standard() -> None:
    pod = _manifests()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "volumes" not in pod or all("hostPath" not in v for v in pod["volumes"])
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert "privileged" not in context and "add" not in context["capabilities"]
    # What an operator must do first is said where they look.
    text = (KUBERNETES / "deployment.yaml").read_text()
    assert "docker build -t" in text and "docker push" in text
    assert "token_urlsafe" in (KUBERNETES / "secret.yaml").read_text()


def test_stop_time_comment_agrees_with_the_bridge_and_the_readme() -> None:
    from waldur_bridge.__main__ import STOP_TIMEOUT

    text = (KUBERNETES / "deployment.yaml").read_text()
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"bounded at {STOP_TIMEOUT} s" in text
    assert f"bounded at\n  {STOP_TIMEOUT} s" in readme or f"bounded at {STOP_TIMEOUT} s" in readme
    assert "(up to 10 s)" in text and "(up to 10 s)" in readme


# No Python package renders a kustomization that is kept up to date; kubectl's built-in
# kustomize does, offline. Without kubectl the rendering is skipped (saying so), everywhere.
@pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl is not installed (it renders kustomizations offline: kubectl kustomize)",
)
def test_the_kustomization_renders() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in YAML(typ="safe", pure=True).load_all(result.stdout) if d]
    by_kind = {d["kind"]: d for d in rendered}
    assert set(by_kind) == {"Secret", "ConfigMap", "Deployment", "Service"}
    manifests = _manifests()
    for kind, doc in by_kind.items():
        assert doc["metadata"]["name"] == manifests[kind]["metadata"]["name"]
    assert by_kind["Deployment"]["spec"] == manifests["Deployment"]["spec"]
