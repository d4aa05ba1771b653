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

{{- define "trainyard.workerAuthSecretName" -}}
{{ .Values.workerAuth.existingSecret | default (printf "%s-worker-auth" (include "trainyard.fullname" .)) }}
{{- end -}}

{{- define "trainyard.schedulerHost" -}}
{{ include "trainyard.fullname" . }}-scheduler
{{- end -}}

{{/* Refuses to render what could not start, or would start unauthenticated. */}}
{{- define "trainyard.validate" -}}
{{- if not (or .Values.auth.tokens .Values.auth.existingSecret) }}
{{- fail "set auth.tokens or auth.existingSecret: the scheduler's API listens beyond loopback and needs API tokens, e.g. --set-string auth.tokens=\"operator:$(openssl rand -hex 24)\\,viewer:$(openssl rand -hex 24)\" (see deploy/README.md)" }}
{{- end }}
{{- if not (or .Values.workerAuth.token .Values.workerAuth.existingSecret) }}
{{- fail "set workerAuth.token or workerAuth.existingSecret: workers authenticate to the scheduler with a join token (>= 16 chars), e.g. --set-string workerAuth.token=$(openssl rand -hex 24) (see deploy/README.md)" }}
{{- end }}
{{- if and .Values.worker.enabled (not .Values.artifacts.url) }}
{{- fail "workers run in their own pods: set artifacts.url (s3://bucket/prefix, gs://..., az://...) with its credentials in extraEnv/extraEnvFrom; a task's inputs, outputs, logs and its DAG's code reach workers only through the artifact store (see deploy/README.md)" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName: a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt (see deploy/README.md)" }}
{{- end }}
{{- if and .Values.tls.clientAuth (not .Values.tls.enabled) }}
{{- fail "tls.clientAuth (mTLS) needs tls.enabled=true and tls.secretName" }}
{{- end }}
{{- if and .Values.tls.clientAuth .Values.worker.enabled (not .Values.tls.workerSecretName) }}
{{- fail "tls.clientAuth needs tls.workerSecretName: a kubernetes.io/tls Secret with the workers' client certificate tls.crt and key tls.key, signed by the CA in ca.crt of tls.secretName (see deploy/README.md)" }}
{{- end }}
{{- end -}}
