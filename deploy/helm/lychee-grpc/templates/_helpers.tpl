{{- define "lychee-grpc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lychee-grpc.fullname" -}}
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

{{- define "lychee-grpc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lychee-grpc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lychee-grpc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "lychee-grpc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "lychee-grpc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lychee-grpc.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lychee-grpc.authSecretName" -}}
{{- default (printf "%s-auth" (include "lychee-grpc.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* Pod termination budget: preStop sleep, then the server's drain, then a margin to exit. */}}
{{- define "lychee-grpc.terminationGracePeriodSeconds" -}}
{{- add (int (ceil (float64 .Values.server.graceSeconds))) (int .Values.lifecycle.preStopSleepSeconds) (int .Values.lifecycle.terminationExtraSeconds) }}
{{- end }}

{{- define "lychee-grpc.devices" -}}
{{- if .Values.server.devices }}{{ .Values.server.devices }}{{ else if gt (int .Values.gpu.count) 1 }}all{{ end }}
{{- end }}
