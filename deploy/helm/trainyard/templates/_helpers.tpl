{{/* Names and labels shared by every template. */}}
{{- define "trainyard.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "trainyard.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "trainyard.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "trainyard.dbSecretName" -}}
{{ .Values.database.existingSecret | default (printf "%s-db" (include "trainyard.fullname" .)) }}
{{- end -}}

{{- define "trainyard.authSecretName" -}}
{{ .Values.auth.existingSecret | default (printf "%s-auth" (include "trainyard.fullname" .)) }}
{{- end -}}
