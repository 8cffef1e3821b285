"""Docker cannot run here: keep docker/ correct by parsing it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_builds_cpu_by_default_cuda_by_argument_and_runs_gunicorn_threads() -> None:
    ops = dockerfile()
    assert ops[0][0] == "ARG" and ops[1][0] == "FROM"
    args = dict(rest.split("=", 1) for op, rest in ops if op == "ARG" and "=" in rest)
    assert args["TORCH_VARIANT"] == "cpu" and args["TORCH_VERSION"] == "2.13.0"
    run = " ".join(rest for op, rest in ops if op == "RUN")
    assert "whl/${TORCH_VARIANT}" in run and "-r requirements.txt" in run
    for op, rest in ops:
        if op == "COPY":
            for src in rest.split()[:-1]:
                assert (ROOT / src).exists(), f"COPY source {src} missing"
    cmd = [rest for op, rest in ops if op == "CMD"][-1]
    assert "gunicorn" in cmd and "--threads" in cmd and "backend.wsgi:app" in cmd
    assert "--preload" not in cmd  # CUDA cannot be initialised before the fork
    assert ("EXPOSE", "9090") in ops
    wsgi = (ROOT / "backend" / "wsgi.py").read_text()  # the module gunicorn loads, without starting a model
    assert re.search(r"^app = create_app\(\)", wsgi, re.M)


def test_dockerignore_keeps_the_heavy_folders_out_and_every_copy_source_in() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for heavy in (".venv", "runs", "resume", ".git", "device_pack"):  # GBs of packages, run folders, states
        assert heavy in patterns, heavy
    copied = [src for op, rest in dockerfile() if op == "COPY" for src in rest.split()[:-1]]
    assert "model/" in copied
    for src in copied:  # a top-level pattern that matched a COPY source would break the build
        assert src.rstrip("/").split("/")[0] not in patterns, src
    assert not any(p.startswith("model") or p.startswith("backend") for p in patterns)


def test_compose_has_label_studio_backend_and_model_volume() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    services = compose["services"]
    ls_env = dict(e.split("=", 1) for e in services["label-studio"]["environment"])
    assert ls_env["ML_BLOCK_LOCAL_IP"] == "false" and ls_env["SSRF_PROTECTION_ENABLED"] == "false"
    assert services["label-studio"]["image"].endswith(":1.23.2")
    backend = services["backend"]
    env = dict(e.split("=", 1) for e in backend["environment"])
    assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080"  # the service name, not localhost
    assert env["MODEL_DIR"] == "/data/model" and "LABEL_STUDIO_API_KEY" in env and "DEVICE" in env
    assert "model-data:/data/model" in backend["volumes"] and "model-data" in compose["volumes"]
    assert backend["build"]["dockerfile"] == "docker/Dockerfile"
    assert (ROOT / "docker" / backend["build"]["context"] / backend["build"]["dockerfile"]).resolve().exists()


def test_compose_scale_profile_redis_replicas_behind_nginx() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    services = compose["services"]
    # The default `docker compose up` is unchanged; the scale-out services only come with --profile scale.
    assert "profiles" not in services["label-studio"] and "profiles" not in services["backend"]
    for name in ("redis", "backend-replica", "balancer"):
        assert services[name]["profiles"] == ["scale"], name

    redis = services["redis"]
    assert re.fullmatch(r"redis:7[\d.]*-alpine", redis["image"])
    command = redis["command"]
    assert command[0] == "redis-server" and command[command.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert command[command.index("--save") + 1] == "" and "--maxmemory" in command  # a bounded cache

    replica, backend = services["backend-replica"], services["backend"]
    assert replica["build"] == backend["build"]
    env = dict(e.split("=", 1) for e in replica["environment"])
    assert env["REDIS_URL"] == "redis://redis:6379/0" and "FEEDBACK_TTL_S" in env
    assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080" and env["MODEL_DIR"] == "/data/model"
    assert "model-data:/data/model" in replica["volumes"]  # one training store for every replica
    assert "ports" not in replica  # replicas cannot share a host port; the balancer publishes one
    assert "redis" in replica["depends_on"]
    count = re.fullmatch(r"\$\{BACKEND_REPLICAS:-(\d+)\}", str(replica["deploy"]["replicas"]))
    assert count and int(count.group(1)) >= 2

    balancer = services["balancer"]
    assert balancer["image"].startswith("nginx:") and balancer["depends_on"] == ["backend-replica"]
    assert balancer["ports"] == ["9091:9090"]
    source, target = balancer["volumes"][0].split(":")[:2]
    assert target == "/etc/nginx/conf.d/default.conf"
    nginx = (ROOT / "docker" / source).read_text()
    assert re.search(r"upstream fcfi_backend \{[^}]*server backend-replica:9090;", nginx)
    assert "listen 9090;" in nginx and "proxy_pass http://fcfi_backend;" in nginx
    assert re.search(r"proxy_read_timeout (\d+)s;", nginx)  # longer than nginx's 60 s default: clicks queue
    assert int(re.search(r"proxy_read_timeout (\d+)s;", nginx).group(1)) > 60


def test_compose_scale_profile_fit_worker_runs_the_queued_jobs() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    services = compose["services"]
    worker, replica = services["fit-worker"], services["backend-replica"]
    assert worker["profiles"] == ["scale"]
    assert worker["build"] == replica["build"]  # the same image as the replicas
    assert worker["command"] == ["python", "-m", "backend.learning.worker"]
    assert (ROOT / "backend" / "learning" / "worker.py").is_file()
    env = dict(e.split("=", 1) for e in worker["environment"])
    replica_env = dict(e.split("=", 1) for e in replica["environment"])
    # The app enqueues where the worker listens, and the job sees the replicas' MODEL_DIR, images and base.
    assert env["REDIS_URL"] == replica_env["REDIS_URL"] == "redis://redis:6379/0"
    for name in ("MODEL_DIR", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "DEVICE"):
        assert env[name] == replica_env[name], name
    assert "REDIS_PREFIX" not in env and "REDIS_PREFIX" not in replica_env  # both on the default queue fcfi-fit
    assert "model-data:/data/model" in worker["volumes"]  # promoted versions and the training store, shared
    assert "redis" in worker["depends_on"] and "ports" not in worker
    assert "deploy" not in worker  # the GPU reservation is commented out, like the others
    text = (ROOT / "docker" / "docker-compose.yml").read_text()
    block = text[text.index("  fit-worker:"):text.index("\nvolumes:")]
    assert "#         - driver: nvidia" in block and "capabilities: [gpu]" in block
    assert "TODO" not in text
    requirements = (ROOT / "requirements.txt").read_text().split()
    assert "rq==2.12.0" in requirements and any(r.startswith("redis==") for r in requirements)
