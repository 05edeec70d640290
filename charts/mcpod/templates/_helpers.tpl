{{- define "mcpod.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mcpod.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "mcpod.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{- define "mcpod.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Scope and defaults, the same for the operator and the router. */}}
{{- define "mcpod.env" -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: MCPOD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
{{- if .Values.watchAllNamespaces }}
- name: MCPOD_ALL_NAMESPACES
  value: "true"
{{- end }}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- if ne .Values.logFormat "text" }}
- name: MCPOD_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end }}
- name: AUTO_SHUTDOWN_TIMEOUT
  value: {{ .Values.defaults.idleTimeout | quote }}
- name: MCPOD_STARTUP_TIMEOUT
  value: {{ .Values.defaults.startupTimeout | quote }}
- name: STDIO_TIMEOUT
  value: {{ .Values.defaults.requestTimeout | quote }}
- name: MAX_MEMORY_PER_CONTAINER
  value: {{ .Values.defaults.maxMemory | quote }}
- name: MAX_CPU_PER_CONTAINER
  value: {{ .Values.defaults.maxCpu | quote }}
{{- end -}}
