#!/usr/bin/env bash
# Run the two images the way a Knative pod runs them and talk to the app through the sidecar.
#
#   scripts/build-image.sh && scripts/smoke-image.sh
#
# Both containers share one network namespace (the app's, standing in for the pod's pause
# container), get the Knative environment, a read-only root with no writable /tmp, user 65532
# and no capabilities (docs/deploy.md#what-the-image-expects). A third container in the same namespace plays kubelet and
# the ingress: the images carry no curl, so it speaks HTTP with Python's http.client.
# The namespace has only loopback (--network none): a pod's containers need nothing else, and
# the host needs no port publishing or bridge setup.
#
# Environment: QUEUEPROXY_IMAGE, SAMPLEAPP_IMAGE, REGISTRY, TAG, CONTAINER_ENGINE as in
# build-image.sh; RUN_OPTS: extra `run` flags, word-split. Podman on a machine like our CI's:
#   RUN_OPTS="--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024" \
#     scripts/smoke-image.sh
# Exit status 0 when every check passed.
set -euo pipefail

source "$(cd "$(dirname "$0")" && pwd)/image-common.sh"
read -r -a run_opts <<<"${RUN_OPTS:-}"

pod=qp-smoke-$$
restricted=(--read-only --user 65532 --cap-drop ALL --security-opt no-new-privileges)
if [[ $engine == podman ]]; then
    # Podman mounts a writable tmpfs on /tmp, /var/tmp and /run under --read-only; Knative doesn't.
    restricted+=(--read-only-tmpfs=false)
fi

# What Knative's reconciler sets on its queue-proxy container (docs/contract.md#variables), for this "pod".
knative_env=(
    -e SERVING_NAMESPACE=default -e SERVING_SERVICE=hello -e SERVING_CONFIGURATION=hello
    -e SERVING_REVISION=hello-00001 -e "SERVING_POD=$pod" -e SERVING_POD_IP=127.0.0.1
    -e HOST_IP=127.0.0.1 -e QUEUE_SERVING_PORT=8012 -e QUEUE_SERVING_TLS_PORT=8112
    -e CONTAINER_CONCURRENCY=10 -e REVISION_TIMEOUT_SECONDS=300
    -e REVISION_RESPONSE_START_TIMEOUT_SECONDS=0 -e REVISION_IDLE_TIMEOUT_SECONDS=0
    -e SERVING_LOGGING_CONFIG= -e SERVING_LOGGING_LEVEL=info -e USER_PORT=8080
    -e SYSTEM_NAMESPACE=knative-serving -e ENABLE_HTTP2_AUTO_DETECTION=false
    -e ENABLE_HTTP_FULL_DUPLEX=false -e ENABLE_MULTI_CONTAINER_PROBES=false -e ROOT_CA=
    -e 'SERVING_READINESS_PROBE={"httpGet":{"path":"/healthz","port":8080,"host":"127.0.0.1","scheme":"HTTP"},"successThreshold":1}'
    -e 'OBSERVABILITY_CONFIG={"tracing":{},"metrics":{},"runtime":{},"requestMetrics":{"protocol":"prometheus"}}'
    # Ours, not Knative's: a 1 s quiet period instead of 30 s keeps the SIGTERM check short.
    -e QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS=1
)

# kubelet's readiness probe, then the ingress, then the autoscaler's and Prometheus' scrapes.
read -r -d '' client <<'PYTHON' || true
import http.client, sys, time

def get(port, path="/", headers=None):
    """(status, headers, body); status 0 and the error as body when the connection fails."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    except OSError as error:
        return 0, {}, repr(error)
    finally:
        conn.close()

probe = {"K-Network-Probe": "queue", "User-Agent": "kube-probe/1.33"}
deadline = time.time() + 60
while get(8012, headers=probe)[0] != 200:
    if time.time() > deadline:
        sys.exit("FAIL  the sidecar did not become ready within 60 s")
    time.sleep(0.01)
print(f"ready-at {time.time():.3f}")
failures = 0

def check(label, ok, shown):
    global failures
    failures += not ok
    print(f"{'ok  ' if ok else 'FAIL'}  {label}: {shown}")

status, _, body = get(8012, headers=probe)
check("kubelet probe :8012 (K-Network-Probe: queue)", status == 200 and body == "queue",
      f"{status} {body!r}")
status, _, body = get(8012)
check("GET / through :8012", status == 200 and "Hello smoke" in body, f"{status} {body.strip()!r}")
status, headers, body = get(8012, headers={"K-Network-Probe": "probe", "K-Network-Hash": "abc"})
echoed = headers.get("K-Network-Hash")
check("ingress probe (K-Network-Probe: probe)", status == 200 and echoed == "abc",
      f"{status} K-Network-Hash={echoed!r}")
time.sleep(1.1)  # one 1 s reporting window, so the stat counts the requests above
status, _, body = get(9090, "/metrics")
stat = [line for line in body.splitlines() if line.startswith("queue_requests_per_second")]
check(":9090 /metrics (autoscaler stat, text form)", status == 200 and bool(stat),
      f"{status} {stat or body[:200]!r}")
status, _, body = get(9091, "/metrics")
series = sorted({line.split("{")[0].split(" ")[0] for line in body.splitlines()
                 if line.startswith("kn_")})
check(":9091 /metrics (request metrics)", status == 200 and bool(series),
      f"{status} {series or body[:200]!r}")
sys.exit(1 if failures else 0)
PYTHON

cleanup() {
    # One at a time: the app container holds the namespace the other two joined.
    for container in "$pod-client" "$pod-queue" "$pod-app"; do
        "$engine" rm -f "$container" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

echo "smoke-image: $engine, $queueproxy_image + $sampleapp_image"
"$engine" run -d --name "$pod-app" --network none "${restricted[@]}" "${run_opts[@]}" \
    -e PORT=8080 -e TARGET=smoke "$sampleapp_image" >/dev/null
"$engine" create --name "$pod-queue" --network "container:$pod-app" "${restricted[@]}" \
    "${run_opts[@]}" "${knative_env[@]}" "$queueproxy_image" >/dev/null
# The client polls before the sidecar starts, so "ready in" = container start to first 200.
"$engine" run -d --name "$pod-client" --network "container:$pod-app" "${restricted[@]}" \
    "${run_opts[@]}" --entrypoint python3 "$sampleapp_image" -c "$client" >/dev/null
sleep 2  # let the client's interpreter start before the clock does
started=$(date +%s.%N)
"$engine" start "$pod-queue" >/dev/null
client_status=$("$engine" wait "$pod-client")
report=$("$engine" logs "$pod-client" 2>&1)
grep -v '^ready-at ' <<<"$report" || true
ready_at=$(awk '/^ready-at /{print $2}' <<<"$report")
if [[ -n $ready_at ]]; then
    awk -v a="$started" -v b="$ready_at" 'BEGIN{printf "info  sidecar container start to ready: %.2f s\n", b - a}'
fi

# SIGTERM: drain (1 s quiet period here), then exit 0 (docs/contract.md#drain-and-shutdown).
"$engine" stop -t 20 "$pod-queue" >/dev/null
exit_code=$("$engine" inspect --format '{{.State.ExitCode}}' "$pod-queue")
if [[ $exit_code == 0 ]]; then echo "ok    sidecar exit status after SIGTERM: 0"; else
    echo "FAIL  sidecar exit status after SIGTERM: $exit_code"; client_status=1; fi
echo "--- sidecar log"
"$engine" logs "$pod-queue" 2>&1 | tail -n 20
echo "--- app log"
"$engine" logs "$pod-app" 2>&1 | tail -n 5
"$engine" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
    | grep -F -e "$queueproxy_image " -e "$sampleapp_image " || true
if [[ $client_status == 0 ]]; then echo "smoke-image: PASS"; else echo "smoke-image: FAIL"; exit 1; fi
