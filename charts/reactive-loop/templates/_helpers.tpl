{{/*
Helpers shared by every template of the chart.
*/}}

{{/* The chart name, overridable with nameOverride. */}}
{{- define "reactive-loop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects, at most 63 characters (a DNS label).
The release name alone when it already contains the chart name.
*/}}
{{- define "reactive-loop.fullname" -}}
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

{{/* chart name and version, as in the helm.sh/chart label. */}}
{{- define "reactive-loop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object of the release carries. */}}
{{- define "reactive-loop.labels" -}}
helm.sh/chart: {{ include "reactive-loop.chart" . }}
{{ include "reactive-loop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: reactive-loop
{{- end }}

{{/* The minimal, immutable labels that select the operator pods. */}}
{{- define "reactive-loop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "reactive-loop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's metrics Service: a DNS label too, so the suffix is kept within 63. */}}
{{- define "reactive-loop.metricsServiceName" -}}
{{- printf "%s-metrics" (include "reactive-loop.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* The name of the operator's ServiceAccount. */}}
{{- define "reactive-loop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "reactive-loop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag of the operator image (tag defaults to appVersion). */}}
{{- define "reactive-loop.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{/* repository:tag of the default node image (tag defaults to appVersion). */}}
{{- define "reactive-loop.nodeImage" -}}
{{- printf "%s:%s" .Values.node.image.repository (default .Chart.AppVersion .Values.node.image.tag) }}
{{- end }}

{{/*
The labels of the node pods the operator creates (contract.py): every node pod
of every loop, whichever release made the operator.
*/}}
{{- define "reactive-loop.nodeSelectorLabels" -}}
app.kubernetes.io/name: reactive-loop
app.kubernetes.io/component: node
{{- end }}

{{/*
The namespaced permissions of the operator: the ReactiveLoop resources and
every child it creates for a loop. Granting a node's Role get/patch/watch on
its pod needs the operator to hold those verbs itself (RBAC escalation rule).
*/}}
{{- define "reactive-loop.namespacedRules" -}}
- apiGroups: ["reactive-loop.dev"]
  resources: ["reactiveloops"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["reactive-loop.dev"]
  resources: ["reactiveloops/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["reactive-loop.dev"]
  resources: ["reactiveloops/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods/status"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["services", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  # create only: the operator makes <loop>-hmac and never reads or changes a
  # Secret, so in cluster-wide mode it cannot read any (docs/operator.md,
  # "Cluster-wide mode and Secrets").
  verbs: ["create"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* A label map as "k=v,k2=v2" (sorted), the form the operator's RLO_*_LABELS take. */}}
{{- define "reactive-loop.kvList" -}}
{{- $pairs := list }}
{{- range $k, $v := . }}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}
