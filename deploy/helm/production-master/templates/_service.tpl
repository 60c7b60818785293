{{/*
One Python service: its ConfigMap of settings, its Deployment and its ServiceAccount.

Arguments (a dict):
  root        the chart's root context
  service     ingest | orchestrator | worker | registry
  config      the ConfigMap data (YAML text)
  env         more container env entries: secrets, REDIS_URL (YAML list text)
  hpa         true when an HPA owns the replica count
  volumes, volumeMounts   extra ones (YAML list text), optional
  volumesChecksum         folded into the pods' checksum annotation, optional

Probes: the services answer /healthz and /readyz as pm.ops.v1.OpsService over gRPC, which only
Envoy turns into HTTP; on their own ports they serve the standard gRPC health service, which
reports SERVING once every dependency probe passes (and NOT_SERVING while one fails or during
shutdown). So readiness is the gRPC health check and liveness the gRPC port accepting
connections: a dependency outage takes a pod out of its Service without restarting it.

Services that others call (all but the worker) pause in preStop before SIGTERM, so Envoy's DNS
refresh (5 s) and the clients drop the pod before it stops accepting RPCs.
*/}}
{{- define "pm.serviceObjects" -}}
{{- $root := .root }}
{{- $svc := index (include "pm.services" $root | fromYaml) .service }}
{{- $name := include "pm.componentName" (dict "root" $root "component" .service) }}
{{- $ctx := dict "root" $root "component" .service }}
{{- $config := printf "%s\nGRPC_LISTEN: %s\nMETRICS_LISTEN: %s" .config (printf "0.0.0.0:%d" (int $svc.grpcPort) | quote) (printf "0.0.0.0:%d" (int $svc.metricsPort) | quote) }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $name }}
  labels:
    {{- include "pm.componentLabels" $ctx | nindent 4 }}
data:
  {{- $config | nindent 2 }}
{{- if $root.Values.serviceAccount.create }}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $name }}
  labels:
    {{- include "pm.componentLabels" $ctx | nindent 4 }}
  {{- with $root.Values.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: false
{{- end }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "pm.componentLabels" $ctx | nindent 4 }}
spec:
  {{- if not .hpa }}
  replicas: {{ index $root.Values.replicaCount $svc.key }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "pm.selectorLabels" $ctx | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  template:
    metadata:
      labels:
        {{- include "pm.componentLabels" $ctx | nindent 8 }}
        {{- with $root.Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- include "pm.podAnnotations" (dict "root" $root "checksum" (printf "%s%s" $config (.volumesChecksum | default "") | sha256sum) "metricsPort" $svc.metricsPort) | nindent 8 }}
    spec:
      serviceAccountName: {{ include "pm.serviceAccountName" $ctx }}
      automountServiceAccountToken: false
      {{- with include "pm.imagePullSecrets" $root }}{{ trim . | nindent 6 }}{{ end }}
      {{- include "pm.podSecurityContext" $root | nindent 6 }}
      {{- $preStop := ternary 0 5 (eq .service "worker") }}
      terminationGracePeriodSeconds: {{ add (int $root.Values.config.shutdownGraceSeconds) $preStop 10 }}
      {{- with include "pm.scheduling" $ctx }}{{ trim . | nindent 6 }}{{ end }}
      containers:
        - name: {{ .service }}
          image: {{ include "pm.image" $ctx | quote }}
          {{- with include "pm.imagePullPolicy" $root }}{{ trim . | nindent 10 }}{{ end }}
          {{- include "pm.containerSecurityContext" $root | nindent 10 }}
          ports:
            - name: grpc
              containerPort: {{ $svc.grpcPort }}
              protocol: TCP
            - name: metrics
              containerPort: {{ $svc.metricsPort }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ $name }}
          env:
            {{- include "pm.join" (list (include "pm.env.vault" $root) .env) | nindent 12 }}
          readinessProbe:
            grpc:
              port: {{ $svc.grpcPort }}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 3
          livenessProbe:
            tcpSocket:
              port: grpc
            initialDelaySeconds: 10
            periodSeconds: 15
            timeoutSeconds: 3
            failureThreshold: 4
          startupProbe:
            tcpSocket:
              port: grpc
            periodSeconds: 2
            failureThreshold: 60
          {{- if $preStop }}
          lifecycle:
            preStop:
              exec:
                command: ["sleep", "{{ $preStop }}"]
          {{- end }}
          resources:
            {{- toYaml (index $root.Values.resources $svc.key) | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- with .volumeMounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 256Mi
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
{{- end }}
