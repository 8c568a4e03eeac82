{{/*
Names are fixed: the pipelines and the launcher refer to them (one release per namespace).
*/}}
{{- define "kuberlhf.name" -}}
kuberlhf
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "kuberlhf.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels; call with (dict "ctx" $ "component" "...") or with the root context. */}}
{{- define "kuberlhf.selectorLabels" -}}
{{- $ctx := .ctx | default . -}}
app.kubernetes.io/name: {{ include "kuberlhf.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* Standard labels of every object. */}}
{{- define "kuberlhf.labels" -}}
{{- $ctx := .ctx | default . -}}
helm.sh/chart: {{ include "kuberlhf.chart" $ctx }}
{{ include "kuberlhf.selectorLabels" . }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
app.kubernetes.io/part-of: kuberlhf
{{- end }}

{{/* A kuberlhf image: (dict "ctx" $ "image" "launcher") -> <registry>/kuberlhf-launcher:<tag>, or
<registry>/kuberlhf-launcher@<digest> when image.digest is set. */}}
{{- define "kuberlhf.image" -}}
{{- $img := .ctx.Values.image -}}
{{- include "kuberlhf.imageRef" (dict "repository" (printf "%s/kuberlhf-%s" (trimSuffix "/" $img.registry) .image) "tag" $img.tag "digest" $img.digest) }}
{{- end }}

{{/* An image reference: (dict "repository" .. "tag" .. "digest" ..) -> repository@digest, else repository:tag. */}}
{{- define "kuberlhf.imageRef" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest }}
{{- else -}}
{{- printf "%s:%s" .repository .tag }}
{{- end }}
{{- end }}

{{/* Pod securityContext: the restricted Pod Security Standard. */}}
{{- define "kuberlhf.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container securityContext: the restricted Pod Security Standard, read-only root filesystem. */}}
{{- define "kuberlhf.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Name of the Secret with the object-store credentials. */}}
{{- define "kuberlhf.s3SecretName" -}}
{{- if .Values.storage.createSecret -}}
kuberlhf-s3
{{- else -}}
{{- required "storage.existingSecret: name the Secret holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or set storage.createSecret=true" .Values.storage.existingSecret -}}
{{- end }}
{{- end }}

{{/* Name of the Secret with the W&B key; empty when W&B is off. */}}
{{- define "kuberlhf.wandbSecretName" -}}
{{- if .Values.wandb.createSecret -}}
kuberlhf-wandb
{{- else -}}
{{- .Values.wandb.existingSecret -}}
{{- end }}
{{- end }}

{{/* AWS_ENDPOINT_URL_S3 of runs: storage.endpoint, else the dev store's Service when it is on. */}}
{{- define "kuberlhf.s3Endpoint" -}}
{{- if .Values.storage.endpoint -}}
{{- .Values.storage.endpoint -}}
{{- else if .Values.devStore.enabled -}}
{{- printf "http://kuberlhf-s3.%s.svc:8333" .Release.Namespace -}}
{{- end }}
{{- end }}

{{/* Selector of the dev store's pods (for NetworkPolicy peers). */}}
{{- define "kuberlhf.devStorePeer" -}}
podSelector:
  matchLabels:
    {{- include "kuberlhf.selectorLabels" (dict "ctx" . "component" "s3") | nindent 4 }}
{{- end }}

{{/*
Egress rules shared by training pods and launcher steps: DNS, the object store (the dev store, the
configured addresses and peers), HTTPS outside the private ranges and the API server (publicHttps),
and networkPolicy.extraEgress.
*/}}
{{- define "kuberlhf.commonEgress" -}}
{{- $np := .Values.networkPolicy -}}
{{- if and (not $np.publicHttps) (not .Values.devStore.enabled) (not $np.objectStore.cidrs) (not $np.objectStore.peers) }}
{{- fail "networkPolicy.objectStore: with networkPolicy.publicHttps=false training pods reach no object store: set networkPolicy.objectStore.cidrs or .peers (or devStore.enabled)" }}
{{- end }}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ $np.dns.namespace }}
      podSelector:
        matchLabels:
          {{- toYaml $np.dns.podLabels | nindent 10 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- if .Values.devStore.enabled }}
- to:
    - {{- include "kuberlhf.devStorePeer" . | nindent 6 }}
  ports:
    - protocol: TCP
      port: 8333
{{- end }}
{{- if or $np.objectStore.cidrs $np.objectStore.peers }}
- to:
    {{- range $np.objectStore.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
    {{- with $np.objectStore.peers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- range $np.objectStore.ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end }}
{{- if $np.publicHttps }}
- to:
    - ipBlock:
        cidr: 0.0.0.0/0
        except:
          {{- range concat $np.privateCidrs $np.apiServer.cidrs | uniq }}
          - {{ . }}
          {{- end }}
  ports:
    - protocol: TCP
      port: 443
{{- end }}
{{- with $np.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
cluster.yaml of the kuberlhf-config ConfigMap (snake_case keys of kuberlhf.k8s.spec.ClusterConfig): the
cluster defaults of every run, and what the Trainer runtimes are rendered from. The keys a runtime fixes
that have no value here are written as kuberlhf's defaults: config_map (the chart's ConfigMap), run_as_user
(the images' user) and gang_scheduling, so that the launcher compares the runtimes with the same settings.
*/}}
{{- define "kuberlhf.clusterConfig" -}}
{{- $c := .Values.cluster -}}
{{- $cluster := dict
  "backend" $c.backend
  "runtime_kind" .Values.trainer.runtimeKind
  "namespace" .Release.Namespace
  "image" $c.image
  "image_pull_policy" $c.imagePullPolicy
  "image_pull_secret" $c.imagePullSecret
  "service_account" "kuberlhf-train"
  "config_map" "kuberlhf-config"
  "run_as_user" 10001
  "launcher" $c.launcher
  "deepspeed_config" $c.deepspeedConfig
  "nodes" $c.nodes
  "procs_per_node" $c.procsPerNode
  "gpus_per_node" $c.gpusPerNode
  "gpu_product" $c.gpuProduct
  "node_selector" $c.nodeSelector
  "tolerations" $c.tolerations
  "cpu" $c.cpu
  "memory" $c.memory
  "cpu_limit" $c.cpuLimit
  "memory_limit" $c.memoryLimit
  "shm_size" $c.shmSize
  "restart_policy" $c.restartPolicy
  "backoff_limit" $c.backoffLimit
  "ttl_seconds_after_finished" $c.ttlSecondsAfterFinished
  "active_deadline_seconds" $c.activeDeadlineSeconds
  "termination_grace_period_seconds" $c.terminationGracePeriodSeconds
  "clean_pod_policy" $c.cleanPodPolicy
  "elastic_min_nodes" $c.elasticMinNodes
  "elastic_max_nodes" $c.elasticMaxNodes
  "kueue_queue" $c.kueueQueue
  "priority_class" $c.priorityClass
  "gang_scheduling" false
  "storage_secret" (include "kuberlhf.s3SecretName" .)
  "storage_endpoint" (include "kuberlhf.s3Endpoint" .)
  "wandb_secret" (include "kuberlhf.wandbSecretName" .)
  "env" $c.env
  "timeout_s" $c.timeoutS
-}}
{{- toYaml $cluster }}
{{- end }}

{{/*
"true" when the Trainer runtimes are rendered: trainer.runtimes true, or "auto" and the cluster serves the
runtime kind (Kubeflow Trainer v2 installed); "" otherwise.
*/}}
{{- define "kuberlhf.trainerRuntimes" -}}
{{- $want := .Values.trainer.runtimes -}}
{{- if kindIs "string" $want -}}
{{- if .Capabilities.APIVersions.Has (printf "trainer.kubeflow.org/v1alpha1/%s" .Values.trainer.runtimeKind) -}}
true
{{- end -}}
{{- else if $want -}}
true
{{- end -}}
{{- end }}
