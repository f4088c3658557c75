{{/* Names and labels. */}}
{{- define "streamsynth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "streamsynth.fullname" -}}
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

{{- define "streamsynth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamsynth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "streamsynth.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "streamsynth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "streamsynth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "streamsynth.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "streamsynth.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The metrics port the worker listens on: the config's, else the worker default. */}}
{{- define "streamsynth.metricsPort" -}}
{{- dig "metrics" "port" 9400 .Values.config | int }}
{{- end }}

{{/*
Termination grace: the worker's shutdown budget (drain + final commit + producer flush,
all bounded by worker.shutdown_timeout_s) plus a margin for process exit. Kubernetes
SIGKILLs after this, so it must exceed the shutdown timeout or offsets stay uncommitted.
*/}}
{{- define "streamsynth.terminationGracePeriodSeconds" -}}
{{- $shutdown := dig "worker" "shutdown_timeout_s" 60 .Values.config | float64 }}
{{- add (ceil $shutdown | int) (int .Values.terminationGraceMarginSeconds) }}
{{- end }}

{{/*
The worker configuration as written into the ConfigMap: the values' `config`, plus the
wiring the chart owns (the API key's env var name, the Kafka CA path when a TLS Secret is
mounted). Secrets themselves never land here; they arrive as env vars from Secrets.
*/}}
{{- define "streamsynth.workerConfig" -}}
{{- $cfg := deepCopy .Values.config }}
{{- if .Values.llmApiKey.secretName }}
{{- $_ := set $cfg.llm "api_key_env" .Values.llmApiKey.envName }}
{{- end }}
{{- if and .Values.kafkaAuth.tlsSecretName (not (hasKey $cfg.kafka "ssl_cafile")) }}
{{- $_ := set $cfg.kafka "ssl_cafile" (printf "%s/%s" .Values.kafkaAuth.tlsMountPath .Values.kafkaAuth.caKey) }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* The input topics as the worker resolves them (input_topic first, then input_topics). */}}
{{- define "streamsynth.inputTopics" -}}
{{- $topics := list }}
{{- with .Values.config.kafka.input_topic }}{{ $topics = append $topics . }}{{ end }}
{{- range (.Values.config.kafka.input_topics | default list) }}
{{- if not (has . $topics) }}{{ $topics = append $topics . }}{{ end }}
{{- end }}
{{- join "," $topics }}
{{- end }}

{{/*
The container's env. Secrets only ever arrive here, by secretKeyRef; STREAMSYNTH_<SECTION>__<KEY>
variables override the mounted config file (see streamsynth.config).
*/}}
{{- define "streamsynth.env" -}}
{{- if .Values.staticMembership.enabled }}
# Static membership (KIP-345): the pod name is the group.instance.id, so a restarted
# container rejoins without a rebalance (with a StatefulSet, a rolled pod too: its
# name is stable).
- name: STREAMSYNTH_KAFKA__GROUP_INSTANCE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
{{- if .Values.llmApiKey.secretName }}
- name: {{ .Values.llmApiKey.envName }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.llmApiKey.secretName }}
      key: {{ .Values.llmApiKey.secretKey }}
{{- end }}
{{- with .Values.kafkaAuth.saslSecretName }}
{{- if $.Values.kafkaAuth.usernameKey }}
- name: STREAMSYNTH_KAFKA__SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.kafkaAuth.usernameKey }}
{{- end }}
- name: STREAMSYNTH_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.kafkaAuth.passwordKey }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
