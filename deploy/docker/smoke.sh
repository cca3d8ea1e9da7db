#!/usr/bin/env bash
# Smoke test of the CPU image on a real Docker engine:
#   deploy/docker/smoke.sh
# Builds the image (on a local Debian base from deploy/docker/offline-base.sh when no registry
# answers), runs it with the bundled samples on loopback ports, and checks: ready over HTTP, every
# sample model ready, inference over HTTP (JSON and binary tensors) and gRPC equal to ONNX Runtime,
# the image's HEALTHCHECK turning healthy, a non-root user, `docker stop` exiting 0 within the
# grace period; then docker-compose.yml up (the same image) and down. The last line gives the
# image size and the start-to-ready time. Exit 0 when everything holds, 1 with a `FAIL:` line
# otherwise; exit 0 with a `SKIP:` line only when no Docker engine answers or can be started.
# Containers, the compose project and the built image are removed at exit; the base image and
# the build cache are kept for the next run.
# Environment: DOCKER (CLI; default Debian's /usr/bin/docker, which has BuildKit built in),
# DOCKERD (daemon started when none answers and this runs as root), PYTHON (with tritonclient and
# onnxruntime; default .venv/bin/python), SE_ONNX_BASE_IMAGE (the local base's name).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
T0=$(date +%s)

DOCKER="${DOCKER:-$([ -x /usr/bin/docker ] && echo /usr/bin/docker || echo docker)}"
DOCKERD="${DOCKERD:-$(command -v dockerd || echo /usr/sbin/dockerd)}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
BASE_IMAGE="${SE_ONNX_BASE_IMAGE:-se-onnx-base:bookworm}"
# The Dockerfile's default base, read from the file so that the two never differ.
DEFAULT_BASE=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
TAG="se-onnx-smoke:$$"
NAME="se-onnx-smoke-$$"
PROJECT="se-onnx-smoke-$$"
GRACE=75 # docker-compose.yml's stop_grace_period: longer than the server's 60 s drain
export DOCKER_BUILDKIT=1

log() { echo "smoke: $*"; }
fail() {
    echo "smoke: FAIL: $*" >&2
    exit 1
}
elapsed() { echo $(($(date +%s) - T0)); }

# --- cleanup: only what this run started ------------------------------------------------------
STARTED_DOCKERD=""
OVERRIDE=""
COMPOSE_UP=""
cleanup() {
    local rc=$?
    set +e
    if [ -n "$COMPOSE_UP" ]; then
        timeout 120 "${COMPOSE[@]}" down --remove-orphans --timeout 10 >/dev/null 2>&1
    fi
    [ -n "$OVERRIDE" ] && rm -f "$OVERRIDE"
    if [ -n "${ENGINE_UP:-}" ]; then
        "$DOCKER" rm -f "$NAME" >/dev/null 2>&1
        "$DOCKER" rmi "$TAG" >/dev/null 2>&1
    fi
    if [ -n "$STARTED_DOCKERD" ]; then
        kill "$STARTED_DOCKERD" 2>/dev/null && timeout 30 tail --pid="$STARTED_DOCKERD" -f /dev/null
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- engine: the one that answers, or a daemon started here -----------------------------------
engine_answers() { timeout 15 "$DOCKER" info >/dev/null 2>&1; }
if ! command -v "$DOCKER" >/dev/null; then
    log "SKIP: no docker CLI ($DOCKER)"
    exit 0
fi
if ! engine_answers; then
    # Start a daemon only for the default local socket, as root, with dockerd installed.
    if [ -z "${DOCKER_HOST:-}" ] && [ "$(id -u)" -eq 0 ] && [ -x "$DOCKERD" ]; then
        log "no Docker engine answers; starting $DOCKERD (log: /tmp/se-onnx-smoke-dockerd.log)"
        "$DOCKERD" >/tmp/se-onnx-smoke-dockerd.log 2>&1 &
        STARTED_DOCKERD=$!
        for _ in $(seq 30); do
            engine_answers && break
            kill -0 "$STARTED_DOCKERD" 2>/dev/null || break
            sleep 1
        done
    fi
    if ! engine_answers; then
        log "SKIP: no Docker engine answers and none could be started (docker info failed)"
        exit 0
    fi
fi
ENGINE_UP=1
log "Docker engine $("$DOCKER" version --format '{{.Server.Version}}')"

[ -x "$PYTHON" ] || fail "no Python at $PYTHON (set PYTHON to one with tritonclient and onnxruntime)"
"$PYTHON" -c "import numpy, onnxruntime, tritonclient.grpc, tritonclient.http" 2>/dev/null ||
    fail "$PYTHON lacks numpy, onnxruntime or tritonclient[grpc,http]"
if command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
elif "$DOCKER" compose version >/dev/null 2>&1; then
    COMPOSE=("$DOCKER" compose)
else
    fail "neither docker-compose nor the docker compose plugin is installed"
fi
COMPOSE+=(--project-name "$PROJECT" --file docker-compose.yml)

# --- base image: the Dockerfile's when it is here or a registry gives it, else the local one ----
if "$DOCKER" image inspect "$DEFAULT_BASE" >/dev/null 2>&1; then
    BASE="$DEFAULT_BASE"
elif timeout 20 "$DOCKER" pull -q "$DEFAULT_BASE" >/dev/null 2>&1; then
    BASE="$DEFAULT_BASE"
else
    log "$DEFAULT_BASE cannot be pulled (no registry answers within 20 s); using the local base $BASE_IMAGE"
    timeout 900 "$ROOT/deploy/docker/offline-base.sh" "$BASE_IMAGE" || fail "could not make the base image $BASE_IMAGE"
    BASE="$BASE_IMAGE"
fi

# --- build --------------------------------------------------------------------------------------
log "building $TAG (target cpu, base $BASE)"
build_start=$(date +%s)
if ! timeout 900 "$DOCKER" build --progress=plain --target cpu --build-arg "PYTHON_IMAGE=$BASE" -t "$TAG" . \
    >/tmp/se-onnx-smoke-build.log 2>&1; then
    tail -25 /tmp/se-onnx-smoke-build.log >&2
    fail "docker build failed (log: /tmp/se-onnx-smoke-build.log)"
fi
SIZE_MB=$(($("$DOCKER" image inspect --format '{{.Size}}' "$TAG") / 1000000))
log "built in $(($(date +%s) - build_start)) s, $SIZE_MB MB"

# --- run: loopback ports chosen by the engine ---------------------------------------------------
http_ready() { [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$1/v2/health/ready")" = 200 ]; }
run_start=$(date +%s.%N)
"$DOCKER" run -d --name "$NAME" -p 127.0.0.1::8000 -p 127.0.0.1::8001 "$TAG" >/dev/null ||
    fail "docker run failed"
HTTP=$("$DOCKER" port "$NAME" 8000/tcp | head -1)
GRPC=$("$DOCKER" port "$NAME" 8001/tcp | head -1)
deadline=$(($(date +%s) + 90))
until http_ready "$HTTP"; do
    if [ "$("$DOCKER" inspect --format '{{.State.Running}}' "$NAME")" != true ]; then
        "$DOCKER" logs --tail 20 "$NAME" >&2
        fail "the container exited before it was ready"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || fail "not ready over HTTP within 90 s"
    sleep 0.2
done
READY_S=$(awk -v now="$(date +%s.%N)" -v start="$run_start" 'BEGIN { printf "%.1f", now - start }')
log "ready over HTTP on $HTTP in $READY_S s (gRPC on $GRPC)"

timeout 120 "$PYTHON" deploy/docker/smoke_infer.py "$HTTP" "$GRPC" || fail "inference checks (above)"

uid=$("$DOCKER" exec "$NAME" id -u) || fail "docker exec id -u failed"
[ "$uid" != 0 ] || fail "the server runs as root"
log "runs as uid $uid"

# The image's HEALTHCHECK (interval 15 s): the first probe runs one interval after the start.
deadline=$(($(date +%s) + 60))
until [ "$("$DOCKER" inspect --format '{{.State.Health.Status}}' "$NAME")" = healthy ]; do
    [ "$(date +%s)" -lt "$deadline" ] ||
        fail "HEALTHCHECK not healthy within 60 s: $("$DOCKER" inspect --format '{{json .State.Health}}' "$NAME")"
    sleep 1
done
log "HEALTHCHECK healthy"

stop_start=$(date +%s)
timeout $((GRACE + 15)) "$DOCKER" stop -t "$GRACE" "$NAME" >/dev/null || fail "docker stop failed"
code=$("$DOCKER" inspect --format '{{.State.ExitCode}}' "$NAME")
# 137 would mean SIGKILL at the end of the grace period: the server ignored SIGTERM.
[ "$code" = 0 ] || fail "the server exited $code on docker stop (SIGTERM), not 0"
log "docker stop: exit 0 in $(($(date +%s) - stop_start)) s (grace $GRACE s)"
"$DOCKER" rm "$NAME" >/dev/null

# --- compose: the same image, loopback ports ------------------------------------------------------
# The override replaces the image name (so that nothing is built or pulled); the ports come from
# the compose file's variables, given a loopback address and free ports.
OVERRIDE=$(mktemp --suffix=.yml /tmp/se-onnx-smoke-compose.XXXXXX)
printf 'services:\n  se-onnx:\n    image: %s\n' "$TAG" >"$OVERRIDE"
COMPOSE+=(--file "$OVERRIDE")
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export SE_ONNX_PUBLISHED_PORT="127.0.0.1:$(free_port)" SE_ONNX_GRPC_PUBLISHED_PORT="127.0.0.1:$(free_port)"
COMPOSE_UP=1
timeout 120 "${COMPOSE[@]}" up -d --no-build se-onnx >/tmp/se-onnx-smoke-compose.log 2>&1 ||
    {
        tail -20 /tmp/se-onnx-smoke-compose.log >&2
        fail "docker-compose up failed"
    }
HTTP="$SE_ONNX_PUBLISHED_PORT"
deadline=$(($(date +%s) + 90))
until http_ready "$HTTP"; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "compose service not ready over HTTP within 90 s"
    sleep 0.5
done
timeout 120 "$PYTHON" deploy/docker/smoke_infer.py "$HTTP" "$SE_ONNX_GRPC_PUBLISHED_PORT" >/dev/null ||
    fail "inference checks against the compose service"
log "compose: up, ready on $HTTP with the models mounted from ./models, inference answers"
down_start=$(date +%s)
timeout $((GRACE + 30)) "${COMPOSE[@]}" down --remove-orphans >>/tmp/se-onnx-smoke-compose.log 2>&1 ||
    fail "docker-compose down failed"
COMPOSE_UP=""
[ -z "$("$DOCKER" ps -aq --filter "label=com.docker.compose.project=$PROJECT")" ] ||
    fail "containers of the compose project are left after down"
log "compose: down in $(($(date +%s) - down_start)) s"

log "PASS: image $SIZE_MB MB, start-to-ready $READY_S s, whole smoke $(elapsed) s"
