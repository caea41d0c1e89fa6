"""docker-compose.yaml and Dockerfile, checked without a Docker engine.

The real Docker Compose v2 binary (fetched once into ``.tools/``, see
:func:`tests.stack.compose_binary`) validates the file against the Compose schema and resolves it;
the tests then read the resolved JSON and check that the services agree with each other: one
image and one environment for every Airflow service, CeleryExecutor everywhere, broker and
databases pointing at the services that exist, a worker that can be scaled.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.stack import REPO, StackError, compose_binary

__all__: list[str] = []

COMPOSE_FILE = REPO / "docker-compose.yaml"
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
BASE_IMAGE = "apache/airflow:3.3.2-python3.11"
# Only the file's own defaults: a developer's .env must not change what is validated.
_HERMETIC = ("--env-file", os.devnull)


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Run the Compose binary hermetically: no .env, no Docker config, no caller variables."""
    try:
        binary = compose_binary()
    except StackError as exc:
        pytest.fail(f"the Docker Compose validator is needed to check docker-compose.yaml: {exc}")
    home = tmp_path_factory.mktemp("compose-home")

    def run(
        *args: str, file: Path = COMPOSE_FILE, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), "-f", str(file), "--project-directory", str(file.parent), *_HERMETIC, *args],
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(home), **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def _config(compose: Any, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = compose(*args, "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def config(compose: Any) -> dict[str, Any]:
    """docker-compose.yaml as Compose resolves it with every default."""
    return _config(compose)


def _url(service: dict[str, Any], name: str) -> Any:
    return urlsplit(service["environment"][name].removeprefix("db+"))


# --- the validator ------------------------------------------------------------------------------


def test_compose_file_is_valid(compose: Any) -> None:
    for args in ((), ("--profile", "demo")):
        result = compose(*args, "config", "-q")
        assert result.returncode == 0, f"docker compose {' '.join(args)} config -q: {result.stderr}"
        assert result.stderr == "", result.stderr


@pytest.mark.parametrize(
    ("original", "broken", "complaint"),
    [
        # A misspelt key in the postgres service.
        ("    restart: always\n\n  redis:", "    restrat: always\n\n  redis:", "restrat"),
        # The worker waiting for a service that does not exist.
        (
            "      airflow-apiserver:\n        condition: service_healthy",
            "      airflow-api-server:\n        condition: service_healthy",
            "airflow-api-server",
        ),
    ],
    ids=["typo-key", "undefined-service"],
)
def test_validator_rejects_broken_copy(
    compose: Any, tmp_path: Path, original: str, broken: str, complaint: str
) -> None:
    text = COMPOSE_FILE.read_text()
    assert text.count(original) == 1, f"the fixture text {original!r} is no longer in docker-compose.yaml"
    copy = tmp_path / "docker-compose.yaml"
    copy.write_text(text.replace(original, broken))
    result = compose("config", "-q", file=copy)
    assert result.returncode != 0, "the validator accepted a broken file"
    assert complaint in result.stderr, result.stderr


# --- consistency of the resolved file -----------------------------------------------------------


def test_airflow_services_share_one_image_and_environment(config: dict[str, Any]) -> None:
    services = config["services"]
    common = config["x-airflow-common"]
    assert {name for name in services if name.startswith("airflow-")} == AIRFLOW_SERVICES
    for name in AIRFLOW_SERVICES:
        service = services[name]
        assert service["image"] == common["image"], name
        assert service["build"]["dockerfile"] == common["build"]["dockerfile"], name
        assert (REPO / service["build"]["context"]).resolve() == REPO, name
        env = service["environment"]
        drifted = {k: env.get(k) for k, v in common["environment"].items() if env.get(k) != v}
        assert not drifted, f"{name} overrides the common environment: {drifted}"
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false", name
    # The image is the repo's Dockerfile.
    assert (REPO / common["build"]["context"]).resolve() == REPO
    assert common["build"]["dockerfile"] == "Dockerfile"


def test_broker_and_databases_point_at_their_services(config: dict[str, Any]) -> None:
    services = config["services"]
    postgres = services["postgres"]["environment"]
    worker = services["airflow-worker"]

    broker = _url(worker, "AIRFLOW__CELERY__BROKER_URL")
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)
    assert "6379" in [str(port) for port in services["redis"].get("expose", [])]

    for name in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
        url = _url(worker, name)
        assert url.scheme == "postgresql+psycopg2", f"{name}: name the driver ({url.scheme})"
        assert (url.hostname, url.port, url.path) == ("postgres", 5432, f"/{postgres['POSTGRES_DB']}"), name
        assert (url.username, url.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"]), (
            name
        )

    # The lead store: same server, its own database.
    store = _url(worker, "AIRFLOW_CONN_LEADPOST_DEFAULT")
    assert (store.hostname, store.port) == ("postgres", 5432)
    assert (store.username, store.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"])
    assert store.path.strip("/") not in ("", postgres["POSTGRES_DB"]), "the lead store needs its own database"

    api = _url(worker, "AIRFLOW__CORE__EXECUTION_API_SERVER_URL")
    published = [p["target"] for p in services["airflow-apiserver"]["ports"]]
    assert (api.hostname, api.path) == ("airflow-apiserver", "/execution/")
    assert api.port in published


def test_init_prepares_both_databases(config: dict[str, Any]) -> None:
    init = config["services"]["airflow-init"]
    script = "\n".join(init["command"])
    for step in ("airflow db migrate", "CREATE DATABASE", "leadpost db init"):
        assert step in script, f"airflow-init does not run {step!r}"
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        waits_for = config["services"][name]["depends_on"]
        assert waits_for["airflow-init"]["condition"] == "service_completed_successfully", name


def test_depends_on_targets_exist_and_are_healthy(config: dict[str, Any]) -> None:
    services = config["services"]
    for name, service in services.items():
        for target, how in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on missing service {target}"
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[target], (
                    f"{name} waits for {target}, which has no healthcheck"
                )
    assert "/api/v2/version" in " ".join(services["airflow-apiserver"]["healthcheck"]["test"])


def test_worker_can_scale(config: dict[str, Any]) -> None:
    worker = config["services"]["airflow-worker"]
    # A fixed name or host port would make `--scale airflow-worker=3` fail on the second copy.
    assert "container_name" not in worker
    assert "hostname" not in worker
    assert not worker.get("ports")
    assert worker["command"] == ["celery", "worker"]


def test_dags_are_mounted_and_plugins_are_not(config: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        service = config["services"][name]
        mounts = {Path(v["target"]): Path(v["source"]) for v in service["volumes"]}
        assert mounts.get(Path("/opt/airflow/dags")) == REPO / "dags", name
        # leadpost registers its plugin through its entry point; mounting plugins/ loads it twice.
        assert Path("/opt/airflow/plugins") not in mounts, name
        triggers = Path(service["environment"]["LEADPOST_TRIGGERS"])
        assert triggers.parent == Path("/opt/airflow/dags"), name


def test_secrets_are_overridable_local_defaults() -> None:
    text = COMPOSE_FILE.read_text()
    # Every password in the file is a ${VAR:-default}; no literal one.
    literal = re.findall(r"(?im)^\s*\w*PASSWORD:\s*(?!\$\{)\S+", text)
    assert not literal, literal
    for secret in ("FERNET_KEY", "JWT_SECRET", "SECRET_KEY"):
        assert secret not in text, f"{secret} belongs in the generated airflow.cfg, not in the file"


def test_demo_receiver_only_with_its_profile_and_its_address_allowed(compose: Any) -> None:
    plain = _config(compose)
    assert "receiver" not in plain["services"]
    assert plain["services"]["airflow-worker"]["environment"]["AIRFLOW__LEADPOST__ALLOWED_NETWORKS"] == ""

    allowed = "172.30.84.10/32"
    demo = _config(compose, "--profile", "demo", env={"LEADPOST_ALLOWED_NETWORKS": allowed})
    receiver = demo["services"]["receiver"]
    address = ip_address(receiver["networks"]["leadpost-demo"]["ipv4_address"])
    subnet = ip_network(demo["networks"]["leadpost-demo"]["ipam"]["config"][0]["subnet"])
    assert address in subnet
    assert address in ip_network(allowed)
    assert "--port" in receiver["command"] and "9000" in receiver["command"]
    for name in AIRFLOW_SERVICES:
        service = demo["services"][name]
        assert "leadpost-demo" in service["networks"], f"{name} cannot reach the demo receiver"
        assert service["environment"]["AIRFLOW__LEADPOST__ALLOWED_NETWORKS"] == allowed


# --- the image ----------------------------------------------------------------------------------


def test_dockerfile_installs_leadpost_under_the_constraints() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    constraints = (REPO / "constraints.txt").read_text().splitlines()
    assert re.search(rf"^FROM {re.escape(BASE_IMAGE)}$", dockerfile, re.M), "unexpected base image"
    # The base image's Airflow is the one the constraints pin, and celery is the one that works.
    airflow_version = BASE_IMAGE.split(":")[1].split("-")[0]
    assert f"apache-airflow=={airflow_version}" in constraints
    assert "celery==5.6.3" in constraints
    install = re.search(r"pip install(?:[^\n\\]|\\\n)*", dockerfile)
    assert install, "no pip install in the Dockerfile"
    assert "-c /home/airflow/leadpost-src/constraints.txt" in install.group(0)
    assert "[postgres,celery]" in install.group(0)
    # What the Dockerfile copies exists and is not kept out of the build context.
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    for path in ("pyproject.toml", "constraints.txt", "README.md", "plugins"):
        assert (REPO / path).exists(), path
        assert f"!{path}" in ignore or f"!{path}/" in ignore, f".dockerignore leaves out {path}"
