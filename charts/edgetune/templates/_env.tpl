{{/*
The operator's settings: environment variables read by operator/edgetune_operator/settings.py
(tests/unit/test_chart.py checks every name against settings.ENV).
*/}}
{{- define "edgetune.operatorEnv" -}}
- name: EDGETUNE_NAMESPACES
  value: {{ join "," .Values.operator.watchNamespaces | quote }}
- name: EDGETUNE_METRICS_PORT
  value: {{ .Values.metrics.port | quote }}
- name: EDGETUNE_HEALTH_PORT
  value: {{ .Values.health.port | quote }}
- name: EDGETUNE_TRAINER_IMAGE
  value: {{ include "edgetune.image" (list .Values.jobImages.trainer .) | quote }}
- name: EDGETUNE_JETSON_IMAGE
  value: {{ include "edgetune.image" (list .Values.jobImages.jetson .) | quote }}
- name: EDGETUNE_IMAGE_PULL_POLICY
  value: {{ .Values.jobImages.pullPolicy | quote }}
- name: EDGETUNE_JOB_PYTHON
  value: {{ .Values.jobImages.python | quote }}
- name: EDGETUNE_ARTIFACTS_CLAIM
  value: {{ .Values.storage.claimName | quote }}
- name: EDGETUNE_ARTIFACTS_S3
  value: {{ if .Values.objectStorage.endpoint }}{{ .Values.objectStorage | toJson | quote }}{{ else }}""{{ end }}
- name: EDGETUNE_GPU_NODE_SELECTOR
  value: {{ .Values.jobs.gpu.nodeSelector | default dict | toJson | quote }}
- name: EDGETUNE_GPU_TOLERATIONS
  value: {{ .Values.jobs.gpu.tolerations | default list | toJson | quote }}
- name: EDGETUNE_GPU_RESOURCES
  value: {{ .Values.jobs.gpu.resources | default dict | toJson | quote }}
- name: EDGETUNE_GPU_RUNTIME_CLASS
  value: {{ .Values.jobs.gpu.runtimeClassName | quote }}
- name: EDGETUNE_EDGE_NODE_SELECTOR
  value: {{ .Values.jobs.edge.nodeSelector | default dict | toJson | quote }}
- name: EDGETUNE_EDGE_TOLERATIONS
  value: {{ .Values.jobs.edge.tolerations | default list | toJson | quote }}
- name: EDGETUNE_EDGE_RESOURCES
  value: {{ .Values.jobs.edge.resources | default dict | toJson | quote }}
- name: EDGETUNE_EDGE_RUNTIME_CLASS
  value: {{ .Values.jobs.edge.runtimeClassName | quote }}
- name: EDGETUNE_JOB_SERVICE_ACCOUNT
  value: {{ .Values.jobs.serviceAccountName | quote }}
- name: EDGETUNE_JOB_RUN_AS_USER
  value: {{ .Values.jobs.runAsUser | default "" | toString | quote }}
{{- with .Values.jobs.deadlines }}
- name: EDGETUNE_DEADLINES
  value: {{ toJson . | quote }}
{{- end }}
- name: EDGETUNE_WORKERS
  value: {{ .Values.operator.workers | quote }}
- name: EDGETUNE_PROGRESS_INTERVAL
  value: {{ .Values.operator.progressInterval | quote }}
- name: EDGETUNE_LOG_LEVEL
  value: {{ .Values.operator.logLevel | quote }}
- name: EDGETUNE_LEADER_ELECTION
  value: {{ .Values.operator.leaderElection | quote }}
- name: EDGETUNE_LEASE_NAMESPACE
  value: {{ .Release.Namespace | quote }}
# The Pod's name is its identity in the Lease.
- name: EDGETUNE_IDENTITY
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: HOME
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- end -}}
