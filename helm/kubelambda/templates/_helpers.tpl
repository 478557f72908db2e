{{/* Names, labels and images shared by every template. */}}

{{- define "kubelambda.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubelambda.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "kubelambda.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "kubelambda.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubelambda.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubelambda
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Selector labels of one component. app.kubernetes.io/name is always "kubelambda": the NetworkPolicy the operator
writes for every function admits pods labelled name=kubelambda with component gateway or bridge
(kubelambda.resources.labels.GATEWAY_LABELS), so it must not follow nameOverride.
*/}}
{{- define "kubelambda.selectorLabels" -}}
app.kubernetes.io/name: kubelambda
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kubelambda.componentLabels" -}}
{{ include "kubelambda.labels" .root }}
{{ include "kubelambda.selectorLabels" . }}
{{- end -}}

{{- define "kubelambda.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s/%s@%s" .Values.image.registry .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s/%s:%s" .Values.image.registry .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "kubelambda.natsImage" -}}
{{- $i := .Values.nats.image -}}
{{- if $i.digest -}}
{{- printf "%s/%s:%s@%s" $i.registry $i.repository $i.tag $i.digest -}}
{{- else -}}
{{- printf "%s/%s:%s" $i.registry $i.repository $i.tag -}}
{{- end -}}
{{- end -}}

{{- define "kubelambda.serviceAccountName" -}}
{{- $sa := index .root.Values.serviceAccounts .key -}}
{{- default (printf "%s-%s" (include "kubelambda.fullname" .root) .suffix) $sa.name -}}
{{- end -}}

{{- /* The warm pools' namespace: gateway.warmPools.namespace, or <fullname>-warm-pool. */ -}}
{{- define "kubelambda.warmPoolNamespace" -}}
{{- default (printf "%s-warm-pool" (include "kubelambda.fullname" .)) .Values.gateway.warmPools.namespace -}}
{{- end -}}

{{- define "kubelambda.gatewayServiceUrl" -}}
{{- printf "http://%s-gateway.%s.svc:%d" (include "kubelambda.fullname" .) .Release.Namespace (int .Values.gateway.service.port) -}}
{{- end -}}

{{/* The NATS URL the gateway and the worker use; empty when Event invocations are off. */}}
{{- define "kubelambda.natsUrl" -}}
{{- if .Values.async.enabled -}}
{{- if .Values.async.natsUrl -}}
{{- .Values.async.natsUrl -}}
{{- else if .Values.nats.enabled -}}
{{- printf "nats://%s-nats.%s.svc:4222" (include "kubelambda.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* Whether the chart runs NATS (and so makes its users: docs/security.md, "NATS"). */ -}}
{{- define "kubelambda.chartNats" -}}
{{- if and .Values.async.enabled .Values.nats.enabled (not .Values.async.natsUrl) -}}true{{- end -}}
{{- end -}}

{{- /* The NATS URL as one of the chart's NATS users (dict "root" . "user" "gateway"): its password comes from the
environment variable kubelambda.natsPasswordEnv defines before it. With an external NATS: async.natsUrl as is. */ -}}
{{- define "kubelambda.natsUrlAs" -}}
{{- if include "kubelambda.chartNats" .root -}}
{{- printf "nats://%s:$(KL_NATS_%s_PASSWORD)@%s-nats.%s.svc:4222" .user (upper .user) (include "kubelambda.fullname" .root) .root.Release.Namespace -}}
{{- else -}}
{{- include "kubelambda.natsUrl" .root -}}
{{- end -}}
{{- end -}}

{{- /* The env entry with a chart NATS user's password (dict "root" . "user" "gateway"), from <release>-nats-users. */ -}}
{{- define "kubelambda.natsPasswordEnv" -}}
{{- if include "kubelambda.chartNats" .root }}
- name: KL_NATS_{{ upper .user }}_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "kubelambda.fullname" .root }}-nats-users, key: {{ .user }}}}
{{- end }}
{{- end -}}

{{- define "kubelambda.leaderElection" -}}
{{- if or .Values.operator.leaderElection (gt (int .Values.operator.replicas) 1) -}}true{{- end -}}
{{- end -}}

{{- define "kubelambda.peeringName" -}}
{{- include "kubelambda.fullname" . -}}
{{- end -}}

{{/* env entries from a map, sorted by name (deterministic renders). */}}
{{- define "kubelambda.extraEnv" -}}
{{- range $k := keys . | sortAlpha }}
- name: {{ $k }}
  value: {{ index $ $k | toString | quote }}
{{- end }}
{{- end -}}

{{- define "kubelambda.podSecurity" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* Preferred anti-affinity across nodes and zones, unless the component sets its own affinity. */}}
{{- define "kubelambda.affinity" -}}
{{- if .affinity -}}
{{ toYaml .affinity }}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "kubelambda.selectorLabels" . | nindent 12 }}
    - weight: 50
      podAffinityTerm:
        topologyKey: topology.kubernetes.io/zone
        labelSelector:
          matchLabels:
            {{- include "kubelambda.selectorLabels" . | nindent 12 }}
{{- end -}}
{{- end -}}

{{/* Egress every control-plane pod needs: DNS and the API server. */}}
{{- define "kubelambda.np.egressBase" -}}
# DNS.
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
# The Kubernetes API server.
- ports:
    {{- range .Values.networkPolicy.apiServerPorts }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
  {{- with .Values.networkPolicy.apiServerCIDRs }}
  to:
    {{- range . }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
  {{- end }}
{{- if .Values.tracing.endpoint }}
# The traces' OTLP endpoint (tracing.endpoint).
- ports:
    - {port: {{ include "kubelambda.tracingPort" . }}, protocol: TCP}
{{- end }}
{{- end -}}

{{/* KUBELAMBDA_TRACING_* when tracing.endpoint is set (docs/tracing.md); the same names for every component. */}}
{{- define "kubelambda.tracingEnv" -}}
{{- with .Values.tracing.endpoint }}
- name: KUBELAMBDA_TRACING_ENDPOINT
  value: {{ . | quote }}
- name: KUBELAMBDA_TRACING_SAMPLE_RATIO
  value: {{ $.Values.tracing.sampleRatio | toString | quote }}
{{- end }}
{{- end -}}

{{/* The TCP port of tracing.endpoint (its own, else 443 for https, 80 for http). */}}
{{- define "kubelambda.tracingPort" -}}
{{- include "kubelambda.urlPort" .Values.tracing.endpoint -}}
{{- end -}}

{{/* The TCP port of an http(s) URL: its own, else 443 for https and 80 for http. */}}
{{- define "kubelambda.urlPort" -}}
{{- $u := urlParse . -}}
{{- $parts := splitList ":" $u.host -}}
{{- if gt (len $parts) 1 }}{{ last $parts }}{{ else if eq $u.scheme "https" }}443{{ else }}80{{ end -}}
{{- end -}}
