{{/* Names, labels and the arithmetic the templates share (from the `helm create` scaffold). */}}

{{- define "mbc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mbc.fullname" -}}
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

{{- define "mbc.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Kubernetes recommended labels. */}}
{{- define "mbc.labels" -}}
helm.sh/chart: {{ include "mbc.chart" . }}
{{ include "mbc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: consumer
app.kubernetes.io/part-of: microbatch-consumer
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mbc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mbc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Tells the metrics Service from the StatefulSet's headless one, so the ServiceMonitor scrapes each pod once. */}}
{{- define "mbc.metricsServiceLabel" -}}
microbatch-consumer/endpoint: metrics
{{- end }}

{{- define "mbc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mbc.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mbc.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* A setting from .Values.env as text, or the service's default: (dict "root" $ "name" "X" "default" "d"). */}}
{{- define "mbc.setting" -}}
{{- $value := index .root.Values.env .name }}
{{- if or (kindIs "invalid" $value) (eq (toString $value) "") }}{{ .default }}{{ else }}{{ toString $value }}{{ end }}
{{- end }}

{{/* Consumer processes per pod: WORKERS, or for `auto` resources.limits.cpu rounded up (as consumer/cpus.py
counts a cgroup quota); 0 when `auto` has no CPU limit to follow (unknown at render time). */}}
{{- define "mbc.workersPerPod" -}}
{{- $workers := include "mbc.setting" (dict "root" . "name" "WORKERS" "default" "1") | lower }}
{{- if ne $workers "auto" }}
{{- $workers | int }}
{{- else }}
{{- $cpu := "" }}
{{- if and .Values.resources .Values.resources.limits .Values.resources.limits.cpu }}
{{- $cpu = toString .Values.resources.limits.cpu }}
{{- end }}
{{- if not $cpu }}0
{{- else if hasSuffix "m" $cpu }}
{{- ceil (divf (trimSuffix "m" $cpu | float64) 1000) | int }}
{{- else }}
{{- ceil ($cpu | float64) | int }}
{{- end }}
{{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds: SHUTDOWN_TIMEOUT_MS (the batch in hand is finished and committed), plus the
WORKERS supervisor's margin (consumer/workers/supervisor.py _STOP_MARGIN_S = 10 s: it waits SHUTDOWN_TIMEOUT_MS + 10 s for
its workers) whenever a pod may run more than one worker, plus terminationGraceMarginSeconds (closing the consumer,
leaving the group, the kubelet's own delays). */}}
{{- define "mbc.terminationGracePeriodSeconds" -}}
{{- $shutdownMs := include "mbc.setting" (dict "root" . "name" "SHUTDOWN_TIMEOUT_MS" "default" "30000") | int }}
{{- $supervisor := 0 }}
{{- if ne (include "mbc.workersPerPod" . | int) 1 }}{{ $supervisor = 10 }}{{ end }}
{{- add (ceil (divf $shutdownMs 1000) | int) $supervisor .Values.terminationGraceMarginSeconds }}
{{- end }}

{{- define "mbc.topic" -}}
{{- $topics := include "mbc.setting" (dict "root" . "name" "CONSUMER_TOPICS" "default" "") }}
{{- default (first (splitList "," $topics) | trim) .Values.autoscaling.keda.topic }}
{{- end }}

{{- define "mbc.saslEnabled" -}}
{{- if hasPrefix "SASL" (include "mbc.setting" (dict "root" . "name" "KAFKA_SECURITY_PROTOCOL" "default" "PLAINTEXT") | upper) }}true{{ end }}
{{- end }}

{{- define "mbc.tlsEnabled" -}}
{{- if has (include "mbc.setting" (dict "root" . "name" "KAFKA_SECURITY_PROTOCOL" "default" "PLAINTEXT") | upper) (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{/* KEDA's `sasl` value for KAFKA_SASL_MECHANISM. */}}
{{- define "mbc.kedaSasl" -}}
{{- $mechanism := include "mbc.setting" (dict "root" . "name" "KAFKA_SASL_MECHANISM" "default" "") | upper }}
{{- $modes := dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512" "GSSAPI" "gssapi" "OAUTHBEARER" "oauthbearer" }}
{{- if not (hasKey $modes $mechanism) }}
{{- fail (printf "autoscaling.keda: KAFKA_SASL_MECHANISM %q has no KEDA kafka scaler equivalent" $mechanism) }}
{{- end }}
{{- get $modes $mechanism }}
{{- end }}

{{- define "mbc.mountDir" -}}/etc/microbatch-consumer{{- end }}
