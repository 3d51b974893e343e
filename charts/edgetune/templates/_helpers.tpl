{{/*
Names and labels, in the style of cert-manager's chart.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "edgetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The fully qualified app name: fullnameOverride, or "<release>-<name>" (just the release
name when it already contains the chart name). Truncated to 63 characters (DNS-1123 label).
*/}}
{{- define "edgetune.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "name-version", for the helm.sh/chart label. */}}
{{- define "edgetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object gets. */}}
{{- define "edgetune.labels" -}}
helm.sh/chart: {{ include "edgetune.chart" . }}
{{ include "edgetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: edgetune
app.kubernetes.io/component: operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels that select the operator Pods (never change them on upgrade). */}}
{{- define "edgetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "edgetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "edgetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "edgetune.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The metrics Service's name (also the Prometheus job label a ServiceMonitor gives). */}}
{{- define "edgetune.metricsServiceName" -}}
{{- printf "%s-metrics" (include "edgetune.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* An image reference: repository, then @digest or :tag (tag defaults to appVersion). */}}
{{- define "edgetune.image" -}}
{{- $img := index . 0 -}}
{{- $root := index . 1 -}}
{{- $repo := $img.repository -}}
{{- if $root.Values.imageRegistry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" $root.Values.imageRegistry) $img.repository -}}
{{- end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default $root.Chart.AppVersion $img.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/* The namespace for objects that may live elsewhere (ServiceMonitor, PrometheusRule, dashboard). */}}
{{- define "edgetune.namespaceOr" -}}
{{- $ns := index . 0 -}}
{{- $root := index . 1 -}}
{{- default $root.Release.Namespace $ns -}}
{{- end -}}

{{/*
A release-specific RBAC object name from the operator's source name: "edgetune-operator" ->
"<fullname>", "edgetune-operator-<x>" -> "<fullname>-<x>", "<other>" -> "<fullname>-<other>".
*/}}
{{- define "edgetune.rbacName" -}}
{{- $src := index . 0 -}}
{{- $fullname := index . 1 -}}
{{- $suffix := printf "-%s" $src -}}
{{- if hasPrefix "edgetune-operator" $src -}}
{{- $suffix = trimPrefix "edgetune-operator" $src -}}
{{- end -}}
{{- printf "%s%s" $fullname $suffix | trunc 63 | trimSuffix "-" -}}
{{- end -}}
