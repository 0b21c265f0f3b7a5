"""docker-compose.yml against the Compose specification's JSON schema, and the stack's operating rules.

The schema is the copy that the PyPI package check-jsonschema ships
(``check_jsonschema/builtin_schemas/vendor/compose-spec.json``, from the
compose-spec project), so nothing is downloaded at test time. The files are
checked twice: here with jsonschema, and by the ``check-jsonschema`` command
itself, as anyone would run it.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from tests.compose import (
    COMPOSE_FILE,
    CPU_OVERRIDE,
    ROOT,
    InterpolationError,
    environment_of,
    interpolate,
    load,
    load_file,
    parse_duration,
)

SECRETS = {"REDIS_PASSWORD": "test-password", "FLOWER_BASIC_AUTH": "ops:test-secret",
           "GPUQ_API_KEYS": "team-a:" + "ab" * 32}


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    text = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(text.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.fixture(scope="module")
def gpu() -> dict:
    return interpolate(load(COMPOSE_FILE), SECRETS)


@pytest.fixture(scope="module")
def cpu() -> dict:
    return interpolate(load(COMPOSE_FILE, CPU_OVERRIDE), SECRETS)


def _errors(validator, config) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)]


def test_compose_file_and_cpu_variant_match_the_compose_schema(validator, gpu, cpu):
    assert _errors(validator, load_file(COMPOSE_FILE)) == []
    assert _errors(validator, gpu) == []
    assert _errors(validator, cpu) == []


def check_jsonschema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(path)], capture_output=True, text=True, timeout=120)


class _ResetAsValue(yaml.SafeLoader):
    """Reads Compose's ``!reset`` as the value it carries (``null`` here), as the schema sees a field."""


def _reset_value(loader: yaml.SafeLoader, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        return yaml.safe_load(node.value)  # `!reset null`: the plain scalar's own type
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


_ResetAsValue.add_constructor("!reset", _reset_value)


def test_check_jsonschema_accepts_the_compose_file_as_it_is():
    done = check_jsonschema(COMPOSE_FILE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok -- validation done" in done.stdout


def test_check_jsonschema_accepts_the_cpu_override_and_the_merged_cpu_stack(tmp_path):
    # check-jsonschema's YAML parser knows no `!reset`: it refuses the override file as written...
    assert "!reset" in CPU_OVERRIDE.read_text()
    refused = check_jsonschema(CPU_OVERRIDE)
    assert refused.returncode == 1 and f"Failed to parse {CPU_OVERRIDE}" in refused.stdout, refused.stdout
    assert "could not determine a constructor for the tag '!reset'" in refused.stdout, refused.stdout
    # ...so the override, with the tag read as its value, and the merged stack Compose would run go as JSON.
    override = tmp_path / "docker-compose.cpu.json"
    override.write_text(json.dumps(yaml.load(CPU_OVERRIDE.read_text(), Loader=_ResetAsValue)))  # noqa: S506
    merged = tmp_path / "docker-compose.merged-cpu.json"
    merged.write_text(json.dumps(load(COMPOSE_FILE, CPU_OVERRIDE)))
    for path in (override, merged):
        done = check_jsonschema(path)
        assert done.returncode == 0, f"{path.name}: {done.stdout}{done.stderr}"


def test_check_jsonschema_rejects_a_wrong_file(tmp_path):
    wrong = load_file(COMPOSE_FILE)
    wrong["services"]["api"]["restart_policy"] = "always"  # not a service key
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(wrong))
    done = check_jsonschema(path)
    assert done.returncode == 1 and "restart_policy" in done.stdout


def test_the_override_states_the_compose_version_its_reset_needs():
    for path in (COMPOSE_FILE, CPU_OVERRIDE):
        assert re.search(r"Docker Compose 2\.24 or\s+(#\s+)?later", path.read_text()), path.name
    assert re.search(r"Compose 2\.24 or later", (ROOT / "README.md").read_text())


def test_the_schema_check_does_reject_a_wrong_file(validator, gpu):
    wrong = copy.deepcopy(gpu)
    wrong["services"]["api"]["restart_policy"] = "always"  # not a service key
    wrong["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] = ["all"]
    assert len(_errors(validator, wrong)) >= 2


def test_the_stack_has_its_four_services_with_health_checks_and_restarts(gpu):
    services = gpu["services"]
    assert set(services) == {"redis", "api", "worker", "flower"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        assert service.get("restart") in ("unless-stopped", "always"), f"{name} is not restarted"
    for name in ("api", "worker", "flower"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_redis_is_durable_password_protected_and_not_published(gpu):
    redis = gpu["services"]["redis"]
    script = " ".join(redis["command"])
    assert "--appendonly yes" in script and "--appendfsync everysec" in script
    assert "--maxmemory-policy noeviction" in script
    assert "requirepass $REDIS_PASSWORD" in script  # from the environment, on stdin
    assert "ports" not in redis
    assert any(v.startswith("redis-data:") for v in redis["volumes"]) and "redis-data" in gpu["volumes"]
    for name in ("api", "worker", "flower"):
        url = environment_of(gpu["services"][name])["GPUQ_REDIS_URL"]
        assert url == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"


def test_no_secret_is_written_in_the_files():
    for variable in SECRETS:
        env = {k: v for k, v in SECRETS.items() if k != variable}
        with pytest.raises(InterpolationError, match=variable):
            interpolate(load(COMPOSE_FILE), env)
    # Every secret-like variable is an interpolation, never a value: required, or empty unless given
    # (the webhook secret: without it the stack simply sends no webhooks).
    for name, service in load(COMPOSE_FILE)["services"].items():
        for key, value in environment_of(service).items():
            if re.search(r"PASSWORD|AUTH|SECRET|TOKEN", key):
                assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*|:-)\}", value), f"{name}.{key} = {value!r}"
        url = environment_of(service).get("GPUQ_REDIS_URL")
        if url is not None:
            assert url.startswith("redis://:${REDIS_PASSWORD:?"), f"{name}: {url}"
    assert not re.search(r"(?im)^\s*(ENV|ARG)\s+\S*(PASSWORD|AUTH|SECRET|TOKEN)", (ROOT / "Dockerfile").read_text())


def test_worker_reserves_every_gpu_and_outlives_the_job_time_limit(gpu):
    worker = gpu["services"]["worker"]
    assert worker["command"] == ["gpuq", "worker"]
    assert worker["build"]["target"] == "worker-gpu"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    env = environment_of(worker)
    hard_limit = float(env["GPUQ_JOB_TIME_LIMIT"])
    launcher_grace = float(env["GPUQ_STOP_GRACE"])
    docker_grace = parse_duration(worker["stop_grace_period"])
    assert hard_limit < launcher_grace < docker_grace
    # The same time limit everywhere: it sets the visibility timeout, which must agree.
    limits = {environment_of(s).get("GPUQ_JOB_TIME_LIMIT") for n, s in gpu["services"].items() if n != "redis"}
    assert limits == {env["GPUQ_JOB_TIME_LIMIT"]}


def test_cpu_variant_runs_the_cpu_image_without_a_gpu_reservation(cpu):
    worker = cpu["services"]["worker"]
    assert "deploy" not in worker
    assert worker["build"]["target"] == "worker-cpu"
    assert environment_of(worker)["GPUQ_GPUS"] == "none"
    assert worker["command"] == ["gpuq", "worker"]


def test_flower_takes_its_credentials_from_the_environment_and_keeps_state(gpu):
    flower = gpu["services"]["flower"]
    assert environment_of(flower)["FLOWER_BASIC_AUTH"] == SECRETS["FLOWER_BASIC_AUTH"]
    command = flower["command"]
    assert "--persistent=True" in command and any(c.startswith("--db=/data/") for c in command)
    assert not any("basic_auth" in c for c in command)  # a command line shows in ps
    assert any(v.startswith("flower-data:/data") for v in flower["volumes"])


def test_dockerfile_targets_run_as_a_non_root_user_with_the_right_torch():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM ", text)[1:]
    by_name = {re.match(r"\S+ AS (\S+)", s).group(1): s for s in stages}
    assert {"api", "worker-cpu", "worker-gpu"} <= set(by_name)
    for name in ("api", "worker-cpu", "worker-gpu"):
        users = re.findall(r"(?m)^USER (\S+)", by_name[name])
        assert users and users[-1] not in ("root", "0"), f"{name} runs as root"
    assert "download.pytorch.org/whl/cpu" in by_name["worker-cpu"]
    assert by_name["worker-gpu"].startswith("${CUDA_IMAGE}") and "nvidia/cuda:" in text
    assert "torch" not in by_name["api"]  # the light side never needs it
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", ".git", "tests"} <= set(ignored)


def test_the_api_requires_keys_and_never_switches_auth_off(gpu, cpu):
    for config in (gpu, cpu):
        env = environment_of(config["services"]["api"])
        assert env["GPUQ_API_KEYS"] == SECRETS["GPUQ_API_KEYS"]
        for service in config["services"].values():
            assert "GPUQ_AUTH" not in environment_of(service)


def test_webhooks_are_configurable_for_the_api_and_the_workers_and_off_by_default(gpu, cpu):
    for config in (gpu, cpu):
        for name in ("api", "worker"):
            env = environment_of(config["services"][name])
            assert env["GPUQ_WEBHOOK_SECRET"] == "" and env["GPUQ_URL_ALLOWLIST"] == "", name
    given = {**SECRETS, "GPUQ_WEBHOOK_SECRET": "whsec-test", "GPUQ_URL_ALLOWLIST": "hooks.internal,10.0.0.0/8"}
    for files in ((COMPOSE_FILE,), (COMPOSE_FILE, CPU_OVERRIDE)):
        services = interpolate(load(*files), given)["services"]
        for name in ("api", "worker"):
            env = environment_of(services[name])
            assert env["GPUQ_WEBHOOK_SECRET"] == "whsec-test", name
            assert env["GPUQ_URL_ALLOWLIST"] == "hooks.internal,10.0.0.0/8", name
        # Flower and Redis neither check nor send webhooks: the secret stays out of them.
        assert "GPUQ_WEBHOOK_SECRET" not in environment_of(services["flower"])
        assert "GPUQ_WEBHOOK_SECRET" not in environment_of(services["redis"])
