{{/* Names */}}
{{- define "callbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "callbridge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "callbridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "callbridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "callbridge.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Labels: call with (dict "ctx" $ "component" "server"), optionally "version" (of a
bundled service's image, so that its pods do not restart on callbridge's upgrades). */}}
{{- define "callbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "callbridge.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "callbridge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "callbridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .version | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: callbridge
{{- end }}

{{/* What the chart reads from .Values.config */}}
{{- define "callbridge.configYaml" -}}
{{- toYaml .Values.config }}
{{- end }}

{{- define "callbridge.port" -}}
{{- dig "server" "port" 8000 .Values.config | int }}
{{- end }}

{{- define "callbridge.dataDir" -}}
{{- dig "data_dir" "/var/lib/callbridge" .Values.config }}
{{- end }}

{{- define "callbridge.direct" -}}
{{- if eq (dig "cluster" "room_mode" "relay" .Values.config | toString) "direct" }}true{{ end }}
{{- end }}

{{- define "callbridge.terminationGracePeriodSeconds" -}}
{{- $drain := dig "cluster" "drain_seconds" 30 .Values.config | float64 | ceil | int }}
{{- add (int .Values.shutdown.preStopSleepSeconds) $drain (int .Values.shutdown.extraGraceSeconds) }}
{{- end }}

{{/* SIP Connect (config.sip.enabled): its ports, read from .Values.config.sip. */}}
{{- define "callbridge.sip" -}}
{{- if dig "sip" "enabled" false .Values.config }}true{{ end }}
{{- end }}

{{- define "callbridge.sip.port" -}}
{{- dig "sip" "port" 5060 .Values.config | int }}
{{- end }}

{{/* SIP over TLS listens on port + 1 when a certificate is configured. */}}
{{- define "callbridge.sip.tls" -}}
{{- if and (dig "sip" "tls_certificate" "" .Values.config) (dig "sip" "tls_key" "" .Values.config) }}true{{ end }}
{{- end }}

{{/* The RTP range "LOW-HIGH" as a JSON list [LOW, HIGH] (read it with fromJsonArray). */}}
{{- define "callbridge.sip.rtpRange" -}}
{{- $parts := splitList "-" (dig "sip" "rtp_ports" "20000-20999" .Values.config | toString) }}
{{- list (first $parts | int) (last $parts | int) | toJson }}
{{- end }}

{{- define "callbridge.sip.containerPorts" -}}
{{- $port := include "callbridge.sip.port" . | int }}
{{- $range := include "callbridge.sip.rtpRange" . | fromJsonArray -}}
- {name: sip-udp, containerPort: {{ $port }}, protocol: UDP}
- {name: sip-tcp, containerPort: {{ $port }}, protocol: TCP}
{{- if include "callbridge.sip.tls" . }}
- {name: sip-tls, containerPort: {{ add1 $port }}, protocol: TCP}
{{- end }}
{{- range $rtp := untilStep (index $range 0 | int) (index $range 1 | int | add1 | int) 1 }}
- {containerPort: {{ $rtp }}, protocol: UDP}
{{- end }}
{{- end }}

{{/* A SIP Service's ports: SIP over UDP and TCP (and TLS), then every RTP port, each on the
number the pod advertises in SDP (a NodePort Service pins its node ports to the same numbers). */}}
{{- define "callbridge.sip.servicePorts" -}}
{{- $port := include "callbridge.sip.port" . | int }}
{{- $range := include "callbridge.sip.rtpRange" . | fromJsonArray }}
{{- $node := eq .Values.sip.service.type "NodePort" -}}
- {name: sip-udp, port: {{ $port }}, targetPort: sip-udp, protocol: UDP{{ if $node }}, nodePort: {{ $port }}{{ end }}}
- {name: sip-tcp, port: {{ $port }}, targetPort: sip-tcp, protocol: TCP{{ if $node }}, nodePort: {{ $port }}{{ end }}}
{{- if include "callbridge.sip.tls" . }}
- {name: sip-tls, port: {{ add1 $port }}, targetPort: sip-tls, protocol: TCP{{ if $node }}, nodePort: {{ add1 $port }}{{ end }}}
{{- end }}
{{- range $rtp := untilStep (index $range 0 | int) (index $range 1 | int | add1 | int) 1 }}
- {name: rtp-{{ $rtp }}, port: {{ $rtp }}, targetPort: {{ $rtp }}, protocol: UDP{{ if $node }}, nodePort: {{ $rtp }}{{ end }}}
{{- end }}
{{- end }}

{{/* The most replicas there can be (per-pod Services and Ingress rules are made for each). */}}
{{- define "callbridge.maxReplicas" -}}
{{- if .Values.autoscaling.enabled }}
{{- max (int .Values.replicaCount) (int .Values.autoscaling.maxReplicas) }}
{{- else }}
{{- int .Values.replicaCount }}
{{- end }}
{{- end }}

{{/* Secrets */}}
{{- define "callbridge.secretName" -}}
{{- include "callbridge.fullname" . }}
{{- end }}

{{/* The chart's own Secret exists when it holds keys or external URLs. */}}
{{- define "callbridge.hasSecret" -}}
{{- if or (not .Values.secret.existingSecret) .Values.externalDatabase.url .Values.externalRedis.url }}true{{ end }}
{{- end }}

{{- define "callbridge.redis.fullname" -}}
{{- printf "%s-redis" (include "callbridge.fullname" .) }}
{{- end }}

{{- define "callbridge.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "callbridge.fullname" .) }}
{{- end }}

{{/* A value kept across upgrades: (dict "ctx" $ "secret" NAME "key" KEY "given" VALUE "new" GENERATED) */}}
{{- define "callbridge.keptSecretValue" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret | default dict }}
{{- $data := get $existing "data" | default dict }}
{{- .given | default (get $data .key | b64dec) | default .new }}
{{- end }}

{{/* Where DATABASE_URL and REDIS_URL come from ("" when from nowhere). */}}
{{- define "callbridge.databaseUrlSource" -}}
{{- if .Values.postgresql.enabled }}postgresql
{{- else if .Values.externalDatabase.existingSecret }}externalSecret
{{- else if .Values.externalDatabase.url }}url
{{- else if hasKey .Values.secret.env "DATABASE_URL" }}secretEnv
{{- else if .Values.secret.existingSecret }}existingSecret
{{- end }}
{{- end }}

{{- define "callbridge.redisUrlSource" -}}
{{- if .Values.redis.enabled }}redis
{{- else if .Values.externalRedis.existingSecret }}externalSecret
{{- else if .Values.externalRedis.url }}url
{{- else if hasKey .Values.secret.env "REDIS_URL" }}secretEnv
{{- else if .Values.secret.existingSecret }}existingSecret
{{- end }}
{{- end }}

{{/* Refuse values that cannot work, with the keys to change. */}}
{{- define "callbridge.validate" -}}
{{- $config := include "callbridge.configYaml" . }}
{{- if and .Values.secret.existingSecret (or .Values.secret.env .Values.secret.credentialsKey) }}
{{- fail "secret.existingSecret is set: put the keys of secret.env and secret.credentialsKey (as CREDENTIALS_KEY) in that Secret instead" }}
{{- end }}
{{- if and .Values.postgresql.enabled (or .Values.externalDatabase.url .Values.externalDatabase.existingSecret) }}
{{- fail "postgresql.enabled and externalDatabase are both set: choose one" }}
{{- end }}
{{- if and .Values.redis.enabled (or .Values.externalRedis.url .Values.externalRedis.existingSecret) }}
{{- fail "redis.enabled and externalRedis are both set: choose one" }}
{{- end }}
{{- if and (contains "DATABASE_URL" $config) (not (include "callbridge.databaseUrlSource" .)) }}
{{- fail "config uses {$env: DATABASE_URL} but nothing provides it: set postgresql.enabled, externalDatabase.url or externalDatabase.existingSecret (or change config.storage.url)" }}
{{- end }}
{{- if and (contains "REDIS_URL" $config) (not (include "callbridge.redisUrlSource" .)) }}
{{- fail "config uses {$env: REDIS_URL} but nothing provides it: set redis.enabled, externalRedis.url or externalRedis.existingSecret (or change config.refs and config.cluster.redis_url)" }}
{{- end }}
{{- if gt (int (include "callbridge.maxReplicas" .)) 1 }}
{{- if ne (dig "refs" "store" "memory" .Values.config | toString) "redis" }}
{{- fail "more than one replica needs config.refs.store: redis (a media socket may reach any replica)" }}
{{- end }}
{{- if not (dig "cluster" "redis_url" "" .Values.config) }}
{{- fail "more than one replica needs config.cluster.redis_url (rooms are homed and commands cross replicas through Redis)" }}
{{- end }}
{{- if not (dig "storage" "url" "" .Values.config) }}
{{- fail "more than one replica needs config.storage.url (a shared PostgreSQL; SQLite is per pod)" }}
{{- end }}
{{- end }}
{{- if not (hasPrefix "/" (include "callbridge.dataDir" .)) }}
{{- fail "config.data_dir must be an absolute path (the chart mounts a volume there)" }}
{{- end }}
{{- if include "callbridge.direct" . }}
{{- if not .Values.perPodUrls.domain }}
{{- fail "config.cluster.room_mode: direct needs perPodUrls.domain (each pod is reached at <pod>.<domain>)" }}
{{- end }}
{{- end }}
{{- if include "callbridge.sip" . }}
{{- $sip := .Values.config.sip }}
{{- if or (kindIs "map" (get $sip "port")) (kindIs "map" (get $sip "rtp_ports")) }}
{{- fail "config.sip.port and config.sip.rtp_ports must be written out, not secret references (the chart renders a port for each)" }}
{{- end }}
{{- $range := include "callbridge.sip.rtpRange" . | fromJsonArray }}
{{- $low := index $range 0 | int }}
{{- $high := index $range 1 | int }}
{{- if not (lt $low $high) }}
{{- fail "config.sip.rtp_ports must be LOW-HIGH with LOW < HIGH" }}
{{- end }}
{{- if gt (add1 (sub $high $low) | int) (int .Values.sip.maxRtpPorts) }}
{{- fail (printf "config.sip.rtp_ports %d-%d is %d ports, more than sip.maxRtpPorts (%d): Services have no port ranges, the chart lists every port; choose a smaller config.sip.rtp_ports (two ports a call) or raise sip.maxRtpPorts" $low $high (add1 (sub $high $low) | int) (int .Values.sip.maxRtpPorts)) }}
{{- end }}
{{- if include "callbridge.direct" . }}
{{- if not .Values.sip.perPodDomain }}
{{- fail "config.sip.enabled in direct room mode needs sip.perPodDomain (each pod advertises <pod>.<sip.perPodDomain>, the address of its own SIP Service)" }}
{{- end }}
{{- if dig "sip" "public_address" "" .Values.config }}
{{- fail "config.sip.public_address would be one address for every pod: in direct room mode each pod advertises <pod>.<sip.perPodDomain>; unset config.sip.public_address" }}
{{- end }}
{{- if eq .Values.sip.service.type "NodePort" }}
{{- fail "sip.service.type: NodePort cannot give every pod (direct room mode) the same ports, node ports are cluster-wide: use LoadBalancer" }}
{{- end }}
{{- if .Values.sip.service.loadBalancerIP }}
{{- fail "sip.service.loadBalancerIP is one address: in direct room mode every pod has a SIP Service of its own; unset it (pods advertise <pod>.<sip.perPodDomain>, the names of their Services' addresses)" }}
{{- end }}
{{- else if not (or (dig "sip" "public_address" "" .Values.config) (and (eq .Values.sip.service.type "LoadBalancer") .Values.sip.service.loadBalancerIP)) }}
{{- fail "config.sip.enabled needs config.sip.public_address (the SIP Service's external address, put in SDP and Contact) or, with a LoadBalancer, sip.service.loadBalancerIP" }}
{{- end }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not (or .Values.autoscaling.cpu.enabled .Values.autoscaling.activeCalls.enabled)) }}
{{- fail "autoscaling.enabled needs autoscaling.cpu.enabled or autoscaling.activeCalls.enabled" }}
{{- end }}
{{- end }}
