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


{{/* The router's authentication settings (README "Security"). */}}
{{- define "mcpod.authEnv" -}}
{{- $name := include "mcpod.fullname" . -}}
{{- $namespace := .Release.Namespace -}}
{{- $hosts := list $name (printf "%s.%s" $name $namespace) (printf "%s.%s.svc" $name $namespace) (printf "%s.%s.svc.%s" $name $namespace .Values.auth.clusterDomain) -}}
- name: MCPOD_ALLOWED_HOSTS
  value: {{ concat $hosts .Values.auth.allowedHosts | join "," | quote }}
{{- if .Values.auth.tokenReview.enabled }}
- name: MCPOD_TOKEN_REVIEW_AUDIENCE
  value: {{ .Values.auth.tokenReview.audience | quote }}
{{- end }}
{{- if .Values.auth.apiKeys.existingSecret }}
- name: MCPOD_API_KEYS
  value: {{ printf "/etc/mcpod/api-keys/%s" .Values.auth.apiKeys.key | quote }}
{{- end }}
{{- with .Values.auth.allowedOrigins }}
- name: MCPOD_ALLOWED_ORIGINS
  value: {{ join "," . | quote }}
{{- end }}
{{- with .Values.auth.publicUrl }}
- name: MCPOD_PUBLIC_URL
  value: {{ . | quote }}
{{- end }}
{{- if .Values.auth.insecureAllowUnauthenticated }}
- name: MCPOD_INSECURE_ALLOW_UNAUTHENTICATED
  value: "true"
{{- else if not (or .Values.auth.tokenReview.enabled .Values.auth.apiKeys.existingSecret) }}
{{- fail "auth: enable auth.tokenReview or set auth.apiKeys.existingSecret (or, insecurely, auth.insecureAllowUnauthenticated): the router refuses to serve the cluster without authentication" }}
{{- end }}
{{- end -}}
