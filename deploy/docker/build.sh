#!/usr/bin/env bash
# Builds Production Master's six images from this checkout:
#   <repository>-{ingest,orchestrator,worker,registry,migrate}:<tag>  (deploy/docker/service.Dockerfile)
#   <repository>-envoy:<tag>                                          (deploy/docker/envoy.Dockerfile)
# the names the Helm chart derives from image.repository and image.tag.
#
#   deploy/docker/build.sh registry.example.com/pm/production-master 1.4.2 [--push]
#
# Steps: `./pants package` (the pex files), the descriptor set of proto/ for Envoy (with the
# grpcio-tools of .stack/venv, which ./pm installs), then one `docker build` per image with dist/
# as the context. DOCKER names another CLI with docker's build syntax (podman, nerdctl).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

usage() { echo "usage: deploy/docker/build.sh <repository> <tag> [--push]" >&2; exit 2; }
[ $# -ge 2 ] || usage
repository=$1 tag=$2 push=${3:-}
[ -z "$push" ] || [ "$push" = --push ] || usage
docker=${DOCKER:-docker}
python=${PYTHON:-.stack/venv/bin/python}
services=(ingest orchestrator worker registry migrate)

./pants --no-pantsd package services:: libs/pm_db:migrate
for service in "${services[@]}"; do
  [ -f "dist/pm-$service.pex" ] || { echo "build: ./pants package did not write dist/pm-$service.pex" >&2; exit 1; }
done

[ -x "$python" ] || { echo "build: $python is missing; run ./pm once (it installs .stack/venv)" >&2; exit 1; }
site_packages=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# shellcheck disable=SC2046  # one argument per proto file
"$python" -m grpc_tools.protoc -I proto -I "$site_packages" --include_imports --include_source_info \
  --descriptor_set_out=dist/pm.pb $(find proto -name '*.proto' | sort)

images=()
for service in "${services[@]}"; do
  "$docker" build -f deploy/docker/service.Dockerfile --build-arg "SERVICE=$service" \
    -t "$repository-$service:$tag" dist/
  images+=("$repository-$service:$tag")
done
"$docker" build -f deploy/docker/envoy.Dockerfile -t "$repository-envoy:$tag" dist/
images+=("$repository-envoy:$tag")

if [ "$push" = --push ]; then
  for image in "${images[@]}"; do "$docker" push "$image"; done
fi
printf 'built %s\n' "${images[@]}"
