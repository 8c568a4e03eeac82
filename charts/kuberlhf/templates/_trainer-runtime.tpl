{{/*
A Kubeflow Trainer v2 runtime kuberlhf-<image> (TrainingRuntime or ClusterTrainingRuntime, trainer.runtimeKind):
(dict "ctx" $ "image" "sft"). Exactly what kuberlhf.k8s.trainjob.build_runtime renders from the chart's
cluster.yaml (kuberlhf.clusterConfig), plus Helm's labels: the launcher compares the two before it creates a
TrainJob and refuses a run whose cluster settings differ. The runtime fixes the pod: ServiceAccount, no API
token, the restricted Pod Security Standard, the Secrets as env, the volumes, the restart rules and the TTL;
a TrainJob sets the image, command, plain env, nodes, resources and placement.
*/}}
{{- define "kuberlhf.trainerRuntime" -}}
{{- $ctx := .ctx -}}
{{- $c := include "kuberlhf.clusterConfig" $ctx | fromYaml -}}
{{- $kind := $ctx.Values.trainer.runtimeKind -}}
{{- $uid := $c.run_as_user | toJson -}}
{{- $exitCode := eq $c.restart_policy "ExitCode" -}}
apiVersion: trainer.kubeflow.org/v1alpha1
kind: {{ $kind }}
metadata:
  name: kuberlhf-{{ .image }}
  {{- if eq $kind "TrainingRuntime" }}
  namespace: {{ $c.namespace }}
  {{- end }}
  labels:
    trainer.kubeflow.org/framework: torch
    app.kubernetes.io/name: {{ include "kuberlhf.name" $ctx }}
    app.kubernetes.io/component: runtime
    app.kubernetes.io/part-of: kuberlhf
    kuberlhf.io/image: {{ .image }}
    helm.sh/chart: {{ include "kuberlhf.chart" $ctx }}
    app.kubernetes.io/instance: {{ $ctx.Release.Name }}
    app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
    app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
spec:
  mlPolicy:
    numNodes: 1
    torch: {}
  {{- if $c.gang_scheduling }}
  podGroupPolicy:  # scheduler-plugins' coscheduling: all nodes of a job or none
    coscheduling:
      scheduleTimeoutSeconds: 60
  {{- end }}
  template:
    spec:
      ttlSecondsAfterFinished: {{ $c.ttl_seconds_after_finished | toJson }}
      replicatedJobs:
        - name: node
          template:
            metadata:
              labels:
                trainer.kubeflow.org/trainjob-ancestor-step: trainer
            spec:
              backoffLimit: {{ $c.backoff_limit | toJson }}
              {{- if $exitCode }}
              # restartPolicy ExitCode: exit 1-127 (2: bad input) fails at once; signals, OOM and exit 200 (a
              # storage outage) count against backoffLimit; an eviction or preemption does not count
              podFailurePolicy:
                rules:
                  - action: Ignore
                    onPodConditions:
                      - type: DisruptionTarget
                  - action: FailJob
                    onExitCodes:
                      containerName: node
                      operator: In
                      values: {{ untilStep 1 128 1 | toJson }}
              {{- end }}
              template:
                metadata:
                  labels:
                    app.kubernetes.io/name: kuberlhf
                    app.kubernetes.io/managed-by: kuberlhf
                    kuberlhf.io/role: train
                  annotations:
                    # Istio sidecars (Kubeflow profile namespaces) would keep a finished pod running
                    sidecar.istio.io/inject: "false"
                spec:
                  serviceAccountName: {{ $c.service_account | quote }}
                  automountServiceAccountToken: false
                  securityContext:
                    runAsNonRoot: true
                    runAsUser: {{ $uid }}
                    runAsGroup: {{ $uid }}
                    fsGroup: {{ $uid }}
                    seccompProfile:
                      type: RuntimeDefault
                  terminationGracePeriodSeconds: {{ $c.termination_grace_period_seconds | toJson }}
                  {{- with $c.priority_class }}
                  priorityClassName: {{ . | quote }}
                  {{- end }}
                  {{- with $c.image_pull_secret }}
                  imagePullSecrets:
                    - name: {{ . | quote }}
                  {{- end }}
                  restartPolicy: {{ ternary "Never" "OnFailure" $exitCode }}
                  containers:
                    - name: node
                      image: {{ printf "%s/kuberlhf-%s:%s" (trimSuffix "/" $ctx.Values.image.registry) .image $ctx.Values.image.tag | quote }}
                      imagePullPolicy: {{ $c.image_pull_policy }}
                      securityContext:
                        allowPrivilegeEscalation: false
                        capabilities:
                          drop:
                            - ALL
                        privileged: false
                        readOnlyRootFilesystem: true
                        runAsNonRoot: true
                        runAsUser: {{ $uid }}
                        runAsGroup: {{ $uid }}
                        seccompProfile:
                          type: RuntimeDefault
                      volumeMounts:
                        - name: tmp
                          mountPath: /tmp
                        - name: data
                          mountPath: /data
                        {{- if $c.shm_size }}
                        - name: dshm
                          mountPath: /dev/shm
                        {{- end }}
                        {{- if $c.config_map }}
                        - name: kuberlhf-config
                          mountPath: /etc/kuberlhf
                          readOnly: true
                        {{- end }}
                      {{- if or $c.storage_secret $c.wandb_secret }}
                      env:
                        {{- with $c.storage_secret }}
                        {{- range list "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" }}
                        - name: {{ . }}
                          valueFrom:
                            secretKeyRef:
                              name: {{ $c.storage_secret | quote }}
                              key: {{ . }}
                        {{- end }}
                        {{- end }}
                        {{- with $c.wandb_secret }}
                        - name: WANDB_API_KEY
                          valueFrom:
                            secretKeyRef:
                              name: {{ . | quote }}
                              key: WANDB_API_KEY
                              optional: true
                        {{- end }}
                      {{- end }}
                  volumes:
                    - name: tmp
                      emptyDir: {}
                    - name: data
                      emptyDir: {}
                    {{- with $c.shm_size }}
                    - name: dshm
                      emptyDir:
                        medium: Memory
                        sizeLimit: {{ . | quote }}
                    {{- end }}
                    {{- with $c.config_map }}
                    - name: kuberlhf-config
                      configMap:
                        name: {{ . | quote }}
                        optional: true
                    {{- end }}
{{- end }}
