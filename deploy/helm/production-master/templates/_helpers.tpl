{{/*
Names, labels, images and the per-service pieces shared by the templates.
*/}}

{{- define "pm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The name of one component's objects: <fullname>-<component> (dict root, component). */}}
{{- define "pm.componentName" -}}
{{- printf "%s-%s" (include "pm.fullname" .root | trunc 45 | trimSuffix "-") .component }}
{{- end }}

{{- define "pm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "pm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: production-master
{{- end }}

{{/* Selector labels of one component (dict root, component). */}}
{{- define "pm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pm.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component's objects; `component` is also set plainly, as the operator
guide's `kubectl get pods -l component=worker` expects. */}}
{{- define "pm.componentLabels" -}}
{{ include "pm.labels" .root }}
app.kubernetes.io/component: {{ .component }}
component: {{ .component }}
{{- end }}

{{/* <image.repository>-<component>:<image.tag> (dict root, component). */}}
{{- define "pm.image" -}}
{{- printf "%s-%s:%s" .root.Values.image.repository .component .root.Values.image.tag }}
{{- end }}

{{- define "pm.imagePullPolicy" -}}
{{- with .Values.image.pullPolicy }}
imagePullPolicy: {{ . }}
{{- end }}
{{- end }}

{{- define "pm.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* The ServiceAccount of a component's pods (dict root, component). */}}
{{- define "pm.serviceAccountName" -}}
{{- if .root.Values.serviceAccount.create }}
{{- include "pm.componentName" . }}
{{- else }}
{{- default "default" .root.Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The services: values key (replicaCount, resources, env), gRPC and metrics ports. */}}
{{- define "pm.services" -}}
ingest: {key: api, grpcPort: 50051, metricsPort: 9101}
orchestrator: {key: orchestrator, grpcPort: 50052, metricsPort: 9102}
worker: {key: worker, grpcPort: 50053, metricsPort: 9103}
registry: {key: registry, grpcPort: 50054, metricsPort: 9104}
{{- end }}

{{- define "pm.registryAddr" -}}
{{- printf "%s:50054" (include "pm.componentName" (dict "root" . "component" "registry")) }}
{{- end }}

{{- define "pm.mainSecret" -}}
{{- required "secrets.existingSecret must name the Secret that holds the services' secrets" .Values.secrets.existingSecret }}
{{- end }}

{{/* DATABASE_URL without credentials: the user is in the URL, the password is PGPASSWORD. */}}
{{- define "pm.databaseUrl" -}}
{{- $pg := .Values.postgresql }}
{{- printf "postgresql://%s@%s:%d/%s?sslmode=%s" $pg.user $pg.host (int $pg.port) $pg.database $pg.sslMode }}
{{- end }}

{{/* PGPASSWORD from the Secret (a container env entry), unless postgresql.passwordKey is empty. */}}
{{- define "pm.env.pgpassword" -}}
{{- if .Values.postgresql.passwordKey }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default (include "pm.mainSecret" .) .Values.postgresql.existingSecret }}
      key: {{ .Values.postgresql.passwordKey }}
{{- end }}
{{- end }}

{{/* REDIS_URL, with the password from the Secret spliced in by Kubernetes when one is set. */}}
{{- define "pm.env.redis" -}}
{{- $r := .Values.redis }}
{{- $auth := "" }}
{{- if $r.passwordKey }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default (include "pm.mainSecret" .) $r.existingSecret }}
      key: {{ $r.passwordKey }}
{{- $auth = printf "%s:$(REDIS_PASSWORD)@" $r.username }}
{{- else if $r.username }}
{{- $auth = printf "%s@" $r.username }}
{{- end }}
- name: REDIS_URL
  value: {{ printf "%s://%s%s:%d/%d" (ternary "rediss" "redis" $r.tls) $auth $r.host (int $r.port) (int $r.db) | quote }}
{{- end }}

{{/* VAULT_TOKEN from its Secret when Vault is configured. */}}
{{- define "pm.env.vault" -}}
{{- if .Values.vault.address }}
- name: VAULT_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ default (include "pm.mainSecret" .) .Values.vault.tokenSecret.name }}
      key: {{ .Values.vault.tokenSecret.key }}
{{- end }}
{{- end }}

{{/* Optional secrets from the main Secret, one env entry per key (dict root, keys). */}}
{{- define "pm.env.optionalSecrets" -}}
{{- $secret := include "pm.mainSecret" .root }}
{{- range .keys }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ . }}
      optional: true
{{- end }}
{{- end }}

{{/* Object-store credentials from the Secret, when asked for. */}}
{{- define "pm.env.awsCredentials" -}}
{{- if .Values.objectStorage.credentialsFromSecret }}
{{- $secret := include "pm.mainSecret" . }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: AWS_ACCESS_KEY_ID}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: AWS_SECRET_ACCESS_KEY}
{{- end }}
{{- end }}

{{/* Settings every service gets (ConfigMap data). */}}
{{- define "pm.config.common" -}}
LOG_LEVEL: {{ .Values.config.logLevel | quote }}
PM_ENV: {{ .Values.config.environment | quote }}
TRACE_SAMPLE_RATIO: {{ .Values.config.traceSampleRatio | toString | quote }}
SHUTDOWN_GRACE_SECONDS: {{ .Values.config.shutdownGraceSeconds | toString | quote }}
{{- with .Values.config.otelExporterOtlpEndpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
{{- with .Values.vault.address }}
VAULT_ADDR: {{ . | quote }}
VAULT_KV_MOUNT: {{ $.Values.vault.kvMount | quote }}
VAULT_PATH_PREFIX: {{ $.Values.vault.pathPrefix | quote }}
{{- end }}
{{- end }}

{{- define "pm.config.database" -}}
DATABASE_URL: {{ include "pm.databaseUrl" . | quote }}
DATABASE_POOL_MAX: {{ .Values.postgresql.poolMax | toString | quote }}
{{- end }}

{{- define "pm.config.objectStorage" -}}
S3_BUCKET: {{ .Values.objectStorage.bucket | quote }}
AWS_REGION: {{ .Values.objectStorage.region | quote }}
{{- with .Values.objectStorage.endpointUrl }}
S3_ENDPOINT_URL: {{ . | quote }}
{{- end }}
{{- end }}

{{- define "pm.config.streams" -}}
{{- with .Values.redis.streamNamespace }}
STREAM_NAMESPACE: {{ . | quote }}
{{- end }}
{{- end }}

{{/* env.<key> of values, as ConfigMap data (dict root, key). */}}
{{- define "pm.config.extra" -}}
{{- range $name, $value := index .root.Values.env .key }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{- define "pm.podSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{- define "pm.containerSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end }}

{{/* Scheduling settings shared by every pod (dict root, component). */}}
{{- define "pm.scheduling" -}}
{{- $v := .root.Values }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $v.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: {{ $v.topologySpread.maxSkew }}
    topologyKey: {{ $v.topologySpread.topologyKey }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "pm.selectorLabels" . | nindent 8 }}
{{- end }}
{{- end }}

{{/* Pod annotations: the config checksum (so a changed setting rolls the pods), Prometheus
scrape annotations, and podAnnotations (dict root, component, checksum, metricsPort). */}}
{{- define "pm.podAnnotations" -}}
checksum/config: {{ .checksum }}
{{- if and .metricsPort .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .metricsPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .root.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Lines of YAML text from a list of pieces: each trimmed, empty ones dropped. */}}
{{- define "pm.join" -}}
{{- $out := list }}
{{- range . }}
{{- with trim . }}
{{- $out = append $out . }}
{{- end }}
{{- end }}
{{- join "\n" $out }}
{{- end }}

{{/* The TCP port of a URL: its explicit port, else 443 for https and 80 otherwise. */}}
{{- define "pm.urlPort" -}}
{{- $url := urlParse . }}
{{- $hostPort := splitList ":" $url.host }}
{{- if eq (len $hostPort) 2 }}
{{- index $hostPort 1 }}
{{- else }}
{{- ternary "443" "80" (eq $url.scheme "https") }}
{{- end }}
{{- end }}

{{/* The ports of networkPolicy.egress.<name>: as given, or derived from the configured address. */}}
{{- define "pm.egressPorts" -}}
{{- $v := .root.Values }}
{{- $ports := index $v.networkPolicy.egress .name "ports" }}
{{- if not $ports }}
{{- if eq .name "postgresql" }}{{ $ports = list $v.postgresql.port }}
{{- else if eq .name "redis" }}{{ $ports = list $v.redis.port }}
{{- else if eq .name "vault" }}{{ $ports = list (include "pm.urlPort" $v.vault.address) }}
{{- else if eq .name "otel" }}{{ $ports = list (include "pm.urlPort" $v.config.otelExporterOtlpEndpoint) }}
{{- else if eq .name "objectStorage" }}
{{- $ports = list (ternary (include "pm.urlPort" $v.objectStorage.endpointUrl) "443" (ne $v.objectStorage.endpointUrl "")) }}
{{- end }}
{{- end }}
{{- if not $ports }}
{{- fail (printf "networkPolicy.egress.%s.ports is empty" .name) }}
{{- end }}
{{- toJson $ports }}
{{- end }}
