{{/*
Names and labels shared by every template of the chart.
*/}}

{{/* The chart name, overridable by nameOverride. */}}
{{- define "kumulus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's base name. With the release named "kumulus" it is "kumulus", so the cluster-wide
objects are called kumulus-operator and kumulus-runner, exactly like config/rbac/.
*/}}
{{- define "kumulus.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kumulus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; pass (dict "ctx" $ "component" "operator"). */}}
{{- define "kumulus.labels" -}}
helm.sh/chart: {{ include "kumulus.chart" .ctx }}
app.kubernetes.io/name: {{ include "kumulus.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: kumulus
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component's Pods; pass (dict "ctx" $ "component" "operator"). */}}
{{- define "kumulus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kumulus.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Object names of each role. */}}
{{- define "kumulus.operatorName" -}}
{{- printf "%s-operator" (include "kumulus.fullname" .) }}
{{- end }}
{{- define "kumulus.runnerClusterRoleName" -}}
{{- printf "%s-runner" (include "kumulus.fullname" .) }}
{{- end }}
{{- define "kumulus.connectionExecutorName" -}}
{{- printf "%s-connection-executor" (include "kumulus.fullname" .) }}
{{- end }}
{{- define "kumulus.webhookName" -}}
{{- printf "%s-webhook" (include "kumulus.fullname" .) }}
{{- end }}

{{/* The image of the operator, webhook and connection executor. */}}
{{- define "kumulus.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString (default .Chart.AppVersion .Values.image.tag)) }}
{{- end }}

{{/* The runner image the operator puts into execution Pods (KUMULUS_RUNNER_IMAGE). */}}
{{- define "kumulus.runnerImage" -}}
{{- printf "%s:%s" .Values.runner.image.repository (toString (default .Chart.AppVersion .Values.runner.image.tag)) }}
{{- end }}

{{/* kopf's --log-format=json when operator.logFormat is json (kopf's own first lines too). */}}
{{- define "kumulus.kopfLogFormat" -}}
{{- if eq .Values.operator.logFormat "json" }}
- --log-format=json
{{- end }}
{{- end }}

{{/* kopf's namespace arguments: --all-namespaces, or one --namespace per watched namespace. */}}
{{- define "kumulus.kopfNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- range .Values.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
{{- end }}

{{/*
Environment of the operator process: KUMULUS_* settings (see operator/kumulus/domain/settings.py).
The chart sets the runner image, identity and watched namespaces from their own values; every
key of operator.settings becomes KUMULUS_<KEY_IN_SNAKE_CASE>.
*/}}
{{- define "kumulus.operatorEnv" -}}
- name: KUMULUS_RUNNER_IMAGE
  value: {{ include "kumulus.runnerImage" . | quote }}
- name: KUMULUS_IMAGE_PULL_POLICY
  value: {{ .Values.runner.image.pullPolicy | quote }}
- name: KUMULUS_RUNNER_SERVICE_ACCOUNT
  value: {{ .Values.runner.serviceAccountName | quote }}
- name: KUMULUS_RUNNER_CLUSTER_ROLE
  value: {{ include "kumulus.runnerClusterRoleName" . | quote }}
- name: KUMULUS_MANAGE_RUNNER_RBAC
  value: {{ .Values.runner.manageRbac | quote }}
- name: KUMULUS_NAMESPACES
  value: {{ join "," .Values.watchNamespaces | quote }}
- name: KUMULUS_CONNECTION_EXECUTOR_INLINE
  value: {{ and .Values.connectionExecutor.enabled (not .Values.connectionExecutor.separate) | quote }}
- name: KUMULUS_WEBHOOK_BASE_URL
  value: {{ include "kumulus.webhookBaseUrl" . | quote }}
- name: KUMULUS_METRICS_HOST
  value: {{ .Values.metrics.host | quote }}
- name: KUMULUS_LOG_FORMAT
  value: {{ .Values.operator.logFormat | quote }}
{{- range $key, $value := .Values.operator.settings }}
- name: KUMULUS_{{ $key | snakecase | upper }}
  value: {{ include "kumulus.envValue" $value }}
{{- end }}
- name: PYTHONUNBUFFERED
  value: "1"
{{- with .Values.operator.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The base URL of the webhook service: webhook.externalUrl, else the Ingress, else the Service's
cluster DNS name (empty when the service is disabled).
*/}}
{{- define "kumulus.webhookBaseUrl" -}}
{{- $w := .Values.webhook }}
{{- if $w.externalUrl }}
{{- trimSuffix "/" $w.externalUrl }}
{{- else if and $w.enabled $w.ingress.enabled }}
{{- printf "http%s://%s" (ternary "s" "" (gt (len $w.ingress.tls) 0)) $w.ingress.host }}
{{- else if $w.enabled }}
{{- printf "http://%s.%s.svc" (include "kumulus.webhookName" .) .Release.Namespace }}
{{- if ne (int $w.service.port) 80 }}:{{ $w.service.port }}{{ end }}
{{- end }}
{{- end }}

{{/*
Environment of the webhook service: KUMULUS_WEBHOOK_* (see operator/kumulus/webhook/settings.py).
*/}}
{{- define "kumulus.webhookEnv" -}}
- name: KUMULUS_WEBHOOK_HOST
  value: {{ .Values.webhook.host | quote }}
- name: KUMULUS_WEBHOOK_PORT
  value: {{ include "kumulus.envValue" .Values.webhook.port }}
- name: KUMULUS_WEBHOOK_NAMESPACE
  value: {{ .Values.webhook.namespace | quote }}
- name: KUMULUS_WEBHOOK_NAMESPACES
  value: {{ join "," .Values.watchNamespaces | quote }}
{{- range $key, $value := .Values.webhook.settings }}
- name: KUMULUS_WEBHOOK_{{ $key | snakecase | upper }}
  value: {{ include "kumulus.envValue" $value }}
{{- end }}
- name: PYTHONUNBUFFERED
  value: "1"
{{- with .Values.webhook.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
One environment value: null is "" (a setting's "none"), whole numbers without an exponent
(YAML numbers reach templates as float64), lists comma separated, everything else quoted.
*/}}
{{- define "kumulus.envValue" -}}
{{- if kindIs "invalid" . }}""
{{- else if kindIs "float64" . }}{{ if eq (floor .) . }}{{ int64 . | quote }}{{ else }}{{ . | quote }}{{ end }}
{{- else if kindIs "slice" . }}{{ join "," . | quote }}
{{- else }}{{ . | quote }}
{{- end }}
{{- end }}

{{/* Pod scheduling and security shared by the chart's Deployments; pass the component's values. */}}
{{- define "kumulus.podPlacement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
