{{/* Names, labels and shared snippets of the tickguard chart. */}}

{{- define "tickguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name; components append -api, -kapacitor, ... (kept under 63 characters). */}}
{{- define "tickguard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tickguard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component: include "tickguard.selectorLabels" (list . "api") */}}
{{- define "tickguard.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "tickguard.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "tickguard.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "tickguard.chart" $root }}
{{ include "tickguard.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: tickguard
{{- end -}}

{{/* The Secret holding every credential: the user's existingSecret or the one this chart generates. */}}
{{- define "tickguard.secretName" -}}
{{- default (printf "%s-auth" (include "tickguard.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* image reference: include "tickguard.image" (list . .Values.api.image) */}}
{{- define "tickguard.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{- define "tickguard.influxdbName" -}}{{ include "tickguard.fullname" . }}-influxdb{{- end -}}
{{- define "tickguard.apiName" -}}{{ include "tickguard.fullname" . }}-api{{- end -}}
{{- define "tickguard.kapacitorName" -}}{{ include "tickguard.fullname" . }}-kapacitor{{- end -}}
{{- define "tickguard.kapacitorHeadless" -}}{{ include "tickguard.fullname" . }}-kapacitor-headless{{- end -}}

{{- define "tickguard.influxdbUrl" -}}
http://{{ include "tickguard.influxdbName" . }}:{{ .Values.influxdb.port }}
{{- end -}}
{{- define "tickguard.apiUrl" -}}
http://{{ include "tickguard.apiName" . }}:{{ .Values.api.service.port }}
{{- end -}}
{{/* Chronograf and the users' tools talk to shard 0 (it also runs the alert tasks). */}}
{{- define "tickguard.kapacitorUrl" -}}
http://{{ include "tickguard.kapacitorName" . }}-0.{{ include "tickguard.kapacitorHeadless" . }}:{{ .Values.kapacitor.port }}
{{- end -}}

{{/* An env entry read from the release's Secret: include "tickguard.secretEnv" (list . "NAME" "key") */}}
{{- define "tickguard.secretEnv" -}}
{{- $root := index . 0 -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ include "tickguard.secretName" $root }}
      key: {{ index . 2 }}
{{- end -}}

{{/* The container securityContext of tickguard's own images, with the image's numeric user. */}}
{{- define "tickguard.securityContext" -}}
{{- $root := index . 0 -}}
{{- toYaml (merge (dict "runAsUser" (index . 1) "runAsGroup" (index . 1)) $root.Values.securityContext) }}
{{- end -}}

{{/* The detectors as one comma-separated list (TICKGUARD_DETECTORS). */}}
{{- define "tickguard.detectorList" -}}
{{- join "," .Values.detectors -}}
{{- end -}}

{{- define "tickguard.checkValues" -}}
{{- if lt (int .Values.shards) 1 -}}
{{- fail (printf "shards must be >= 1, got %v" .Values.shards) -}}
{{- end -}}
{{- if not .Values.detectors -}}
{{- fail "detectors: name at least one detector (detectors/<name>.toml)" -}}
{{- end -}}
{{- end -}}

{{/* A NetworkPolicy peer selecting one component's pods: include "tickguard.peer" (list . "api") */}}
{{- define "tickguard.peer" -}}
- podSelector:
    matchLabels:
      {{- include "tickguard.selectorLabels" . | nindent 6 }}
{{- end -}}
