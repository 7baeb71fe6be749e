{{/*
Chart name, truncated to the 63 characters DNS labels allow.
*/}}
{{- define "durable.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified release name.
*/}}
{{- define "durable.fullname" -}}
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

{{- define "durable.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "durable.selectorLabels" -}}
app.kubernetes.io/name: {{ include "durable.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "durable.labels" -}}
helm.sh/chart: {{ include "durable.chart" . }}
{{ include "durable.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
durable/hub: {{ .Values.hub | quote }}
{{- end }}

{{- define "durable.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "durable.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "durable.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Name of the Secret the chart creates (redis-url, redis-password, ops-token).
*/}}
{{- define "durable.secretName" -}}
{{- include "durable.fullname" . }}
{{- end }}

{{/*
Parsed redis.url (only meaningful when the chart owns the Redis Secret).
*/}}
{{- define "durable.redisUrlParts" -}}
{{- if and (not .Values.redis.existingSecret) .Values.redis.url }}
{{- toJson (urlParse .Values.redis.url) }}
{{- else }}
{{- toJson dict }}
{{- end }}
{{- end }}

{{/*
Redis password embedded in redis.url, if any.
*/}}
{{- define "durable.redisUrlPassword" -}}
{{- $url := include "durable.redisUrlParts" . | fromJson }}
{{- $userinfo := $url.userinfo | default "" }}
{{- if contains ":" $userinfo }}
{{- (splitn ":" 2 $userinfo)._1 }}
{{- end }}
{{- end }}

{{- define "durable.redisSecretName" -}}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecret }}
{{- else }}
{{- include "durable.secretName" . }}
{{- end }}
{{- end }}

{{- define "durable.redisSecretKey" -}}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecretKey }}
{{- else -}}
redis-url
{{- end }}
{{- end }}

{{/*
Whether the workers get an ops token: by default, unless opsToken.enabled is false and neither
a value nor an existing Secret is given.
*/}}
{{- define "durable.opsTokenEnabled" -}}
{{- if or .Values.opsToken.existingSecret .Values.opsToken.value .Values.opsToken.enabled }}true{{- end }}
{{- end }}

{{/*
Whether the chart's own Secret holds the ops token (key ops-token).
*/}}
{{- define "durable.opsTokenFromChart" -}}
{{- if and (include "durable.opsTokenEnabled" .) (not .Values.opsToken.existingSecret) }}true{{- end }}
{{- end }}

{{/*
The ops token the chart stores: opsToken.value, else the one its Secret already holds (so an
upgrade keeps it), else a new random one. Generated once per render (remembered in
.Values.opsToken, which the schema has been checked against already), so the Secret and the
pods' checksum annotation agree.
*/}}
{{- define "durable.opsToken" -}}
{{- if .Values.opsToken.value }}
{{- .Values.opsToken.value }}
{{- else }}
{{- if not (hasKey .Values.opsToken "generatedToken") }}
{{- $token := "" }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "durable.secretName" .) }}
{{- if $existing }}
{{- $token = get ($existing.data | default dict) "ops-token" | default "" | b64dec }}
{{- end }}
{{- $_ := set .Values.opsToken "generatedToken" ($token | default (randAlphaNum 40)) }}
{{- end }}
{{- .Values.opsToken.generatedToken }}
{{- end }}
{{- end }}

{{- define "durable.opsTokenSecretName" -}}
{{- if .Values.opsToken.existingSecret }}
{{- .Values.opsToken.existingSecret }}
{{- else }}
{{- include "durable.secretName" . }}
{{- end }}
{{- end }}

{{- define "durable.opsTokenSecretKey" -}}
{{- if .Values.opsToken.existingSecret }}
{{- .Values.opsToken.existingSecretKey }}
{{- else -}}
ops-token
{{- end }}
{{- end }}

{{/*
Whether KEDA needs a TriggerAuthentication, and where its password lives.
*/}}
{{- define "durable.kedaRedisPasswordFromChart" -}}
{{- if and .Values.keda.enabled .Values.keda.redisStreams.enabled (not .Values.keda.redisStreams.auth.existingSecret) (include "durable.redisUrlPassword" .) }}true{{- end }}
{{- end }}

{{- define "durable.kedaRedisAuthEnabled" -}}
{{- if or .Values.keda.redisStreams.auth.existingSecret (include "durable.kedaRedisPasswordFromChart" .) }}true{{- end }}
{{- end }}

{{/*
Whether the chart must create its own Secret.
*/}}
{{- define "durable.createSecret" -}}
{{- if or (not .Values.redis.existingSecret) (include "durable.opsTokenFromChart" .) }}true{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: drainTimeout + margin, or the user's value
when it is longer than the drain timeout. Fails rendering otherwise, because
the kubelet would SIGKILL the worker in the middle of draining.
*/}}
{{- define "durable.terminationGracePeriodSeconds" -}}
{{- $drain := int .Values.drainTimeout }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $drain (int .Values.terminationGraceMarginSeconds) }}
{{- else }}
{{- $grace := int .Values.terminationGracePeriodSeconds }}
{{- if le $grace $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than drainTimeout (%d): Kubernetes would kill workers before they finish draining in-flight work and releasing partition leases. Raise it, or leave it null to get drainTimeout + terminationGraceMarginSeconds (%d)." $grace $drain (add $drain (int .Values.terminationGraceMarginSeconds))) }}
{{- end }}
{{- $grace }}
{{- end }}
{{- end }}

{{/*
Activity task stream of the hub (a Redis Cluster hash tag keeps a hub's keys together).
*/}}
{{- define "durable.taskStream" -}}
{{- printf "durable:{%s}:tasks" .Values.hub }}
{{- end }}

{{- define "durable.metricsJob" -}}
{{- .Values.metrics.job | default (include "durable.fullname" .) }}
{{- end }}

{{/*
PromQL label matchers selecting this release's workers.
*/}}
{{- define "durable.promSelector" -}}
{{- printf "job=%q, namespace=%q" (include "durable.metricsJob" .) .Release.Namespace }}
{{- end }}

{{/*
KEDA maxReplicaCount: defaults to, and never exceeds, the partition count.
*/}}
{{- define "durable.kedaMaxReplicas" -}}
{{- $partitions := int .Values.partitions }}
{{- if kindIs "invalid" .Values.keda.maxReplicaCount }}
{{- $partitions }}
{{- else }}
{{- min (int .Values.keda.maxReplicaCount) $partitions }}
{{- end }}
{{- end }}

{{- define "durable.kedaRedisAddress" -}}
{{- if .Values.keda.redisStreams.address }}
{{- .Values.keda.redisStreams.address }}
{{- else }}
{{- $url := include "durable.redisUrlParts" . | fromJson }}
{{- if $url.host }}
{{- if contains ":" $url.host }}
{{- $url.host }}
{{- else }}
{{- printf "%s:6379" $url.host }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "durable.kedaRedisDatabase" -}}
{{- if not (kindIs "invalid" .Values.keda.redisStreams.databaseIndex) }}
{{- int .Values.keda.redisStreams.databaseIndex }}
{{- else }}
{{- $url := include "durable.redisUrlParts" . | fromJson }}
{{- $db := trimPrefix "/" ($url.path | default "") }}
{{- if regexMatch "^[0-9]+$" $db }}{{ $db }}{{ else }}0{{ end }}
{{- end }}
{{- end }}

{{- define "durable.kedaRedisTLS" -}}
{{- if not (kindIs "invalid" .Values.keda.redisStreams.enableTLS) }}
{{- .Values.keda.redisStreams.enableTLS }}
{{- else }}
{{- $url := include "durable.redisUrlParts" . | fromJson }}
{{- eq ($url.scheme | default "redis") "rediss" }}
{{- end }}
{{- end }}

{{/*
Cross-field validation that the JSON schema cannot express.
*/}}
{{- define "durable.validate" -}}
{{- if and (not .Values.redis.existingSecret) (not .Values.redis.url) }}
{{- fail "set redis.url, or redis.existingSecret (with redis.existingSecretKey) to use an existing Secret" }}
{{- end }}
{{- if and .Values.keda.enabled (not .Values.keda.redisStreams.enabled) (not .Values.keda.prometheus.enabled) }}
{{- fail "keda.enabled needs at least one trigger: keda.redisStreams.enabled or keda.prometheus.enabled" }}
{{- end }}
{{- if and .Values.keda.enabled .Values.keda.redisStreams.enabled (not (include "durable.kedaRedisAddress" .)) }}
{{- fail "keda.redisStreams.address (host:port) is required when redis.existingSecret is used, since the chart cannot read the URL" }}
{{- end }}
{{- if and .Values.keda.enabled .Values.keda.prometheus.enabled (not .Values.keda.prometheus.serverAddress) }}
{{- fail "keda.prometheus.serverAddress is required when the prometheus trigger is enabled" }}
{{- end }}
{{- if and .Values.keda.enabled (gt (int .Values.keda.minReplicaCount) (int (include "durable.kedaMaxReplicas" .))) }}
{{- fail (printf "keda.minReplicaCount (%d) exceeds the effective maxReplicaCount (%s, capped at partitions)" (int .Values.keda.minReplicaCount) (include "durable.kedaMaxReplicas" .)) }}
{{- end }}
{{- if and (include "durable.kedaRedisPasswordFromChart" .) (contains "%" (include "durable.redisUrlPassword" .)) }}
{{- fail "the Redis password in redis.url is percent-encoded; put it in a Secret and set keda.redisStreams.auth.existingSecret for KEDA" }}
{{- end }}
{{- if and .Values.opsToken.value (or (not (trim .Values.opsToken.value)) (not (regexMatch "^[ -~]*$" .Values.opsToken.value))) }}
{{- fail "opsToken.value must be printable ASCII and not only spaces: a worker refuses any other token at start (no HTTP header could carry it, or it would turn authentication off). Leave it empty to have the chart generate one" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.serviceMonitor.useOpsToken) (include "durable.opsTokenEnabled" .) }}
{{- fail "serviceMonitor.useOpsToken is false, but the ops token protects /metrics: Prometheus would get 401. Keep useOpsToken true, or turn the token off (opsToken.enabled=false, no value or existingSecret)" }}
{{- end }}
{{- $_ := include "durable.terminationGracePeriodSeconds" . }}
{{- end }}
