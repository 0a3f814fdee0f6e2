"""Every name the operator shares with the cluster: API group, labels, annotations, finalizers,
webhook names and paths, host paths and defaults.

No other package spells these strings; they import them from here so a rename happens once.
"""

from typing import Final

GROUP: Final = "security-profiles-operator.x-k8s.io"
OPERATOR_NAME: Final = "security-profiles-operator"
DEFAULT_NAMESPACE: Final = "security-profiles-operator"
SPOD_NAME: Final = "spod"

# --- labels -------------------------------------------------------------------------------------
LABEL_ENABLE_BINDING: Final = "spo.x-k8s.io/enable-binding"
LABEL_ENABLE_RECORDING: Final = "spo.x-k8s.io/enable-recording"
LABEL_PROFILE_ID: Final = "spo.x-k8s.io/profile-id"
LABEL_NODE_NAME: Final = "spo.x-k8s.io/node-name"
LABEL_PROFILE_STATE: Final = "spo.x-k8s.io/profile-state"
LABEL_PROFILE_KIND: Final = "spo.x-k8s.io/profile-kind"
LABEL_RECORDING_ID: Final = "spo.x-k8s.io/recording-id"
LABEL_RECORDING_NAMESPACE: Final = "spo.x-k8s.io/recording-namespace"
LABEL_CONTAINER_ID: Final = "spo.x-k8s.io/container-id"
LABEL_PARTIAL: Final = "spo.x-k8s.io/partial"
LABEL_APP: Final = "app"
LABEL_NAME: Final = "name"
APP_LABEL_VALUE: Final = OPERATOR_NAME
SPOD_NAME_LABEL_VALUE: Final = "spod"
WEBHOOK_NAME_LABEL_VALUE: Final = "security-profiles-operator-webhook"
RECONCILER_NAME_LABEL_VALUE: Final = "security-profiles-operator"
LABEL_KUBECTL_DEBUG: Final = "app.kubernetes.io/managed-by"
KUBECTL_DEBUG_VALUE: Final = "kubectl-debug"
LABEL_OC_DEBUG: Final = "debug.openshift.io/managed-by"
OC_DEBUG_VALUE: Final = "oc-debug"
LABEL_KUBELET_DIRECTORY: Final = "kubelet.kubernetes.io/directory-location"
# Set by the apiserver on every namespace to the namespace's name; nobody can change it.
LABEL_NAMESPACE_NAME: Final = "kubernetes.io/metadata.name"

# --- annotations --------------------------------------------------------------------------------
ANNOTATION_TRACE_LOGS_PREFIX: Final = "io.containers.trace-logs/"
ANNOTATION_TRACE_BPF_PREFIX: Final = "io.containers.trace-bpf/"
ANNOTATION_TRACE_AVCS_PREFIX: Final = "io.containers.trace-avcs/"
ANNOTATION_TRACE_BPF_APPARMOR_PREFIX: Final = "io.containers.trace-bpf-apparmor/"
ANNOTATION_SYSCALLS: Final = "syscalls"
ANNOTATION_SCC: Final = "openshift.io/scc"
ANNOTATION_CERT_MANAGER_INJECT_CA: Final = "cert-manager.io/inject-ca-from"
ANNOTATION_LEGACY_SECCOMP_POD: Final = "seccomp.security.alpha.kubernetes.io/pod"

# --- finalizers ---------------------------------------------------------------------------------
FINALIZER_NODE_DELETED_SUFFIX: Final = "-deleted"
FINALIZER_PARTIAL_PROFILE: Final = "spo.x-k8s.io/partial-profile-finalizer"
FINALIZER_IN_USE: Final = "in-use-by-active-pods"
FINALIZER_ACTIVE_WORKLOAD: Final = "active-workload-lock"
FINALIZER_RECORDING_LOCK: Final = "active-seccomp-profile-recording-lock"
FINALIZER_UNMERGED: Final = "spo.x-k8s.io/has-unmerged-profiles"

# --- exec auditing ------------------------------------------------------------------------------
EXEC_REQUEST_UID_ENV: Final = "SPO_EXEC_REQUEST_UID"

# --- webhooks -----------------------------------------------------------------------------------
MUTATING_WEBHOOK_CONFIGURATION: Final = "spo-mutating-webhook-configuration"
VALIDATING_WEBHOOK_CONFIGURATION: Final = "spo-validating-webhook-configuration"
WEBHOOK_BINDING: Final = "binding.spo.io"
WEBHOOK_RECORDING: Final = "recording.spo.io"
WEBHOOK_EXEC_METADATA: Final = "execmetadata.spo.io"
WEBHOOK_NODE_DEBUGGING_POD: Final = "nodedebuggingpod.spo.io"
WEBHOOK_RAW_SELINUX: Final = "rawselinuxprofile-validation.spo.io"
WEBHOOK_PROFILE_BINDING: Final = "profilebinding-validation.spo.io"
FAILURE_POLICY_FAIL: Final = "Fail"
FAILURE_POLICY_IGNORE: Final = "Ignore"
# The failurePolicy each webhook is registered with unless the spod's webhookOptions say otherwise; the
# webhook answers its own internal errors the same way, so an error and an outage have one effect.
# Fail closed where the webhook enforces something: a pod admitted unpatched would run without the
# profile an admin bound to it; a pod whose recording annotations were not checked could carry forged
# ones, which the agent would attribute to a recording; an unchecked raw policy could escape its block;
# an unchecked binding could conflict with another. Fail open for exec and debug tagging, which only
# adds an audit correlation to every exec in the cluster and must not block access.
DEFAULT_FAILURE_POLICIES: Final = {
    WEBHOOK_BINDING: FAILURE_POLICY_FAIL,
    WEBHOOK_RECORDING: FAILURE_POLICY_FAIL,
    WEBHOOK_EXEC_METADATA: FAILURE_POLICY_IGNORE,
    WEBHOOK_NODE_DEBUGGING_POD: FAILURE_POLICY_IGNORE,
    WEBHOOK_RAW_SELINUX: FAILURE_POLICY_FAIL,
    WEBHOOK_PROFILE_BINDING: FAILURE_POLICY_FAIL,
}
PATH_BINDING: Final = "/mutate-v1-pod-binding"
PATH_RECORDING: Final = "/mutate-v1-pod-recording"
PATH_EXEC_METADATA: Final = "/mutate-v1-exec-metadata"
PATH_RAW_SELINUX: Final = "/validate-rawselinuxprofile"
PATH_PROFILE_BINDING: Final = "/validate-profilebinding"
WEBHOOK_SERVICE: Final = "webhook-service"
WEBHOOK_DEPLOYMENT: Final = "security-profiles-operator-webhook"
WEBHOOK_CERT_SECRET: Final = "webhook-server-cert"
# The CA (certificate and key) the reconciler signs the webhook's serving certificate with: a Secret of
# its own that only the reconciler reads, so the webhook's Secret never holds a CA key. During a CA
# change the previous CA stays here, and in every caBundle, until it expires.
WEBHOOK_CA_SECRET: Final = "webhook-ca"
PREVIOUS_CA_CERT_FILE: Final = "previous-ca.crt"
PREVIOUS_CA_KEY_FILE: Final = "previous-ca.key"
# File names inside a certificate directory, the same as the keys of a kubernetes.io/tls Secret.
CA_CERT_FILE: Final = "ca.crt"
CA_KEY_FILE: Final = "ca.key"
TLS_CERT_FILE: Final = "tls.crt"
TLS_KEY_FILE: Final = "tls.key"
WEBHOOK_PORT: Final = 9443
METRICS_SERVICE: Final = "metrics"
RECONCILER_DEPLOYMENT: Final = "security-profiles-operator"
PROFILE_CONFIGMAP: Final = "security-profiles-operator-profile"

# --- deployment ---------------------------------------------------------------------------------
DEFAULT_IMAGE: Final = "ghcr.io/spo-py/security-profiles-operator:0.1.0"
RECONCILER_SERVICE_ACCOUNT: Final = "security-profiles-operator"
WEBHOOK_SERVICE_ACCOUNT: Final = "spo-webhook"
SPOD_SERVICE_ACCOUNT: Final = "spod"
METRICS_CLIENT_ROLE: Final = "spo-metrics-client"
METRICS_CLIENT_SERVICE_ACCOUNT: Final = "default"
# How the apiserver names a service account's user, and the group of a namespace's service accounts.
SERVICE_ACCOUNT_USER_PREFIX: Final = "system:serviceaccount:"
SERVICE_ACCOUNTS_GROUP_PREFIX: Final = "system:serviceaccounts:"
PATH_METRICS: Final = "/metrics"
PATH_METRICS_SPOD: Final = "/metrics-spod"
METRICS_PATHS: Final = (PATH_METRICS, PATH_METRICS_SPOD)
HEALTH_PORT: Final = 8085  # the reconciler's /healthz and /readyz (plain HTTP)
PATH_HEALTHZ: Final = "/healthz"
PATH_READYZ: Final = "/readyz"
ENV_OPERATOR_NAMESPACE: Final = "OPERATOR_NAMESPACE"
# The spod's verbosity in the spod pods' environment: `spo` logs at debug level from 1 (docs 7.5.3).
ENV_VERBOSITY: Final = "SPO_VERBOSITY"
ENV_OPERATOR_IMAGE: Final = "RELATED_IMAGE_OPERATOR"  # the image the reconciler puts into the spod DaemonSet
CERT_MANAGER_ISSUER: Final = "selfsigned-issuer"
WEBHOOK_CERTIFICATE: Final = "webhook-cert"
ROOTLESS_UID: Final = 65535
LABEL_HOSTNAME: Final = "kubernetes.io/hostname"
LABEL_POD_SECURITY_PREFIX: Final = "pod-security.kubernetes.io/"
PROFILE_KEY_DAEMON_SECCOMP: Final = "security-profiles-operator.json"
PROFILE_KEY_BPF_RECORDER_SECCOMP: Final = "bpf-recorder.json"
PROFILE_KEY_SELINUXD_POLICY: Final = "selinuxd.cil"
PROFILE_KEY_SELINUX_RECORDING_POLICY: Final = "selinuxrecording.cil"
PROFILE_KEY_SELINUXD_IMAGE_MAPPING: Final = "selinuxd-image-mapping.json"
PROFILE_KEY_JSON_ENRICHER_VOLUME_SOURCE: Final = "json-enricher-log-volume-source.json"
PROFILE_KEY_JSON_ENRICHER_MOUNT_PATH: Final = "json-enricher-log-volume-mount-path"
JSON_ENRICHER_LOG_DIR: Final = "/data/logs/jsonenricher"

# --- node paths ---------------------------------------------------------------------------------
KUBELET_DIR: Final = "/var/lib/kubelet"
SECCOMP_OPERATOR_DIR: Final = "operator"  # below <kubelet>/seccomp
# Seccomp actions ranked most restrictive first (KILL and KILL_THREAD are the same action): a union of
# profiles keeps the less restrictive action of a syscall (base profiles, recording merge).
SECCOMP_ACTION_RESTRICTIVENESS: Final[dict[str, int]] = {
    "SCMP_ACT_KILL_PROCESS": 0,
    "SCMP_ACT_KILL": 1,
    "SCMP_ACT_KILL_THREAD": 1,
    "SCMP_ACT_TRAP": 2,
    "SCMP_ACT_ERRNO": 3,
    "SCMP_ACT_NOTIFY": 4,
    "SCMP_ACT_TRACE": 5,
    "SCMP_ACT_LOG": 6,
    "SCMP_ACT_ALLOW": 7,
}
OPERATOR_ROOT: Final = "/var/lib/security-profiles-operator"
# What the agent's recorder has recorded of running pods, kept across its restarts.
AGENT_RECORDINGS_DIR: Final = f"{OPERATOR_ROOT}/recordings"
SELINUX_POLICY_DIR: Final = "/etc/selinux.d"
SELINUXFS: Final = "/sys/fs/selinux"  # has `enforce` when the kernel runs SELinux
# Compile-only SELinux mode: Debian's reference policy base module and libselinux's .pp -> CIL converter
# (packages selinux-policy-default and policycoreutils), and udica's container templates.
REFPOLICY_BASE_MODULE: Final = "/usr/share/selinux/default/base.pp.bz2"
PP_TO_CIL: Final = "/usr/libexec/selinux/hll/pp"
UDICA_TEMPLATES_DIR: Final = "usr/share/udica/templates"  # inside the udica Python distribution
UDICA_BASE_TEMPLATE: Final = "base_container.cil"  # declares the `container` block
AUDIT_LOG_PATH: Final = "/var/log/audit/audit.log"
SYSLOG_PATH: Final = "/var/log/syslog"
# The kernel's log as records: the audit source for hosts without auditd (kauditd prints there).
KMSG_PATH: Final = "/dev/kmsg"
WEBHOOK_CERT_DIR: Final = "/tmp/k8s-webhook-server/serving-certs"

# --- built-in profile names ---------------------------------------------------------------------
LOG_ENRICHER_TRACE_PROFILE: Final = "log-enricher-trace"
SELINUX_RECORDING_TYPE: Final = "selinuxrecording.process"
SELINUX_TYPE_SUFFIX: Final = ".process"
# The system template every container policy builds on (udica's base_container.cil declares it).
SELINUX_CONTAINER_TEMPLATE: Final = "container"
SELINUX_POLICY_SUFFIX: Final = ".cil"  # <selinux-dir>/<name>.cil, installed as module <name>

# --- node images (built locally, imported into the node's containerd; nothing is ever pulled) ----
# The sandbox image containerd is configured with; ours is a local build tagged with this name.
SANDBOX_IMAGE: Final = "registry.k8s.io/pause:3.10"
# The images the docs' procedures run, spelled exactly as the docs spell them.
IMAGE_TEST_NGINX_UNPRIVILEGED: Final = "quay.io/security-profiles-operator/test-nginx-unprivileged:1.21"
IMAGE_NGINX_UNPRIVILEGED: Final = "nginxinc/nginx-unprivileged:1.21"
IMAGE_TEST_NGINX: Final = "quay.io/security-profiles-operator/test-nginx:1.19.1"
IMAGE_REDIS: Final = "quay.io/security-profiles-operator/redis:6.2.1"
IMAGE_FEDORA_MINIMAL: Final = "registry.fedoraproject.org/fedora-minimal:latest"
IMAGE_UBUNTU: Final = "ubuntu"
DOCS_IMAGES: Final = (
    IMAGE_TEST_NGINX_UNPRIVILEGED,
    IMAGE_NGINX_UNPRIVILEGED,
    IMAGE_TEST_NGINX,
    IMAGE_REDIS,
    IMAGE_FEDORA_MINIMAL,
    IMAGE_UBUNTU,
)
# Our own tests' general-purpose image: a shell, coreutils applets, sleeps until stopped.
IMAGE_TEST_BUSYBOX: Final = "spo.local/busybox:test"
# Where references without a registry or tag resolve, as the kubelet asks containerd for them.
DEFAULT_REGISTRY: Final = "docker.io"
DEFAULT_REPOSITORY_PREFIX: Final = "library"
DEFAULT_TAG: Final = "latest"
# The OCI annotations containerd's import reads an image's name from.
ANNOTATION_OCI_REF_NAME: Final = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_IMAGE_NAME: Final = "io.containerd.image.name"
NODE_IMAGES_TAR: Final = "node-images.tar"
OPERATOR_IMAGE_TAR: Final = "operator-image.tar"  # `spo image build`'s output (below the images cache)
BUSYBOX_PATH: Final = "/bin/busybox"  # Debian's busybox-static
IMAGES_CACHE_SUBDIR: Final = "spo/images"  # below $XDG_CACHE_HOME (~/.cache)
# OCI image-layout vocabulary (image-spec v1).
OCI_LAYOUT_VERSION: Final = "1.0.0"
MEDIA_TYPE_OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_OCI_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"
# The pull subset of the OCI distribution API our loopback registry answers (spo/registry.py).
HEADER_DISTRIBUTION_API_VERSION: Final = "Docker-Distribution-API-Version"
DISTRIBUTION_API_VERSION: Final = "registry/2.0"
HEADER_CONTENT_DIGEST: Final = "Docker-Content-Digest"
# containerd's registry host configuration: <config_path>/<host>/hosts.toml, `_default` for every host.
CONTAINERD_HOSTS_FILE: Final = "hosts.toml"
CONTAINERD_DEFAULT_HOST_DIR: Final = "_default"

# --- the local node (`spo up`): names and host paths it shares with the machine ------------------
# One node per machine: `spo up` and test runs take this flock before touching the host's network,
# cgroups or sysctls, and the node's processes inherit it so it is held exactly while they run.
NODE_LOCK_FILE: Final = "/run/spo-node.lock"
# Pods live on this bridge, in a subnet that keeps clear of common defaults (containerd's 10.88/16,
# Docker's 172.17/16, flannel's 10.244/16) and of the apiserver's service range.
CNI_BRIDGE: Final = "spo0"
CNI_NETWORK: Final = "spo-pods"
POD_SUBNET: Final = "10.217.0.0/24"
SERVICE_SUBNET: Final = "10.0.0.0/24"
CNI_PLUGIN_DIR: Final = "/usr/lib/cni"  # Debian's containernetworking-plugins
CNI_PLUGINS: Final = ("bridge", "host-local", "portmap", "loopback")
CNI_RESULTS_CACHE_DIR: Final = "/var/lib/cni/results"  # libcni's, not configurable from containerd
CONTAINERD_MACHINE_STATE_DIR: Final = "/run/containerd"  # shim sockets land in <it>/s whatever the config
CRI_NAMESPACE: Final = "k8s.io"
CGROUP_V1_ROOT: Final = "/sys/fs/cgroup"
KUBEPODS_CGROUP: Final = "kubepods"
# The node's stand-in for kube-proxy: one nat chain sending the `kubernetes` Service to the apiserver.
NODE_SERVICES_CHAIN: Final = "SPO-SERVICES"
KUBERNETES_SERVICE_PORT: Final = 443
# Chains the kubelet (KUBE-), the CNI bridge and portmap plugins (CNI-) and the node (SPO-) add to iptables.
IPTABLES_CHAIN_PREFIXES: Final = ("KUBE-", "CNI-", "SPO-")
# Sysctls the kubelet (protectKernelDefaults off) and the bridge plugin (gateway) set; restored on down.
NODE_SYSCTLS: Final = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
)
KUBELET_PORT: Final = 10250
CONTAINER_LOG_LINKS_DIR: Final = "/var/log/containers"  # the kubelet's, whatever its configuration
# Host directories a node creates outside its own (shim sockets, libcni's cache, the kubelet's device
# plugin socket and log links, libmount's utab): removed on down when they did not exist before.
NODE_HOST_DIRS: Final = (
    CONTAINERD_MACHINE_STATE_DIR,
    "/var/lib/cni",
    KUBELET_DIR,
    CONTAINER_LOG_LINKS_DIR,
    "/run/mount",
)

# --- the node agent (`spo agent`) ---------------------------------------------------------------
# `<node>-deleted` is cut so the finalizer stays within 63 characters (upstream: nodeName[:55]).
NODE_FINALIZER_MAX_NODE_CHARS: Final = 55
LABEL_VALUE_MAX_LENGTH: Final = 63
# One Lease per node in the operator's namespace, renewed by that node's agent: the reconciler counts the
# nodes that must report a profile's status from the Leases that are not expired.
HEARTBEAT_LEASE_PREFIX: Final = "spod-heartbeat-"
HEARTBEAT_LEASE_DURATION_SECONDS: Final = 40
HEARTBEAT_RENEW_SECONDS: Final = 10
PROC_DIR: Final = "/proc"
# `spo agent --role`: which parts one process runs (agent/roles.py). The spod DaemonSet runs one
# container per part, named as the docs name them; `spo up` runs one process with all of them.
AGENT_ROLE_ALL: Final = "all"
AGENT_ROLE_PROFILES: Final = "profiles"
AGENT_ROLE_LOG_ENRICHER: Final = "log-enricher"
AGENT_ROLE_JSON_ENRICHER: Final = "json-enricher"
# Built-in base profiles (api/baseprofiles.py) carry this label so users can tell them from their own.
LABEL_BUILTIN_BASE_PROFILE: Final = "spo.x-k8s.io/builtin-base-profile"

# --- profile recording from logs (the agent's recorder) ----------------------------------------------
# The server-side apply field manager of the recorded profiles, which the agent's recorder alone writes
# (ARCHITECTURE.md), apart from the reconciler's so that each owns its own fields.
AGENT_FIELD_MANAGER: Final = "spod"
RECORDER_LOGS: Final = "logs"  # ProfileRecording spec.recorder of log-based recording
MERGE_STRATEGY_CONTAINERS: Final = "containers"
LABEL_PARTIAL_VALUE: Final = "true"
# The seccomp architecture of a recorded profile: the node's own, by Python's platform.machine().
SECCOMP_ARCH_BY_MACHINE: Final[dict[str, str]] = {
    "x86_64": "SCMP_ARCH_X86_64",
    "amd64": "SCMP_ARCH_X86_64",
    "aarch64": "SCMP_ARCH_AARCH64",
    "arm64": "SCMP_ARCH_AARCH64",
    "i386": "SCMP_ARCH_X86",
    "i686": "SCMP_ARCH_X86",
    "armv7l": "SCMP_ARCH_ARM",
    "ppc64le": "SCMP_ARCH_PPC64LE",
    "s390x": "SCMP_ARCH_S390X",
    "riscv64": "SCMP_ARCH_RISCV64",
}
POD_PHASE_SUCCEEDED: Final = "Succeeded"

# --- reconciler ---------------------------------------------------------------------------------
# The field manager of every server-side apply the reconciler makes: it owns exactly those fields.
FIELD_MANAGER: Final = "security-profiles-operator"
LEADER_LEASE: Final = "security-profiles-operator-lock"  # upstream's leader election id
# The spod pod template carries a hash of the configuration it was rendered from, so that every spod
# change that alters the DaemonSet rolls its pods (docs: "each configuration change triggers a restart").
ANNOTATION_SPOD_CONFIG_HASH: Final = "security-profiles-operator.x-k8s.io/config-hash"
FINALIZER_SPOD: Final = "security-profiles-operator.x-k8s.io/spod-cleanup"
SPOD_CONDITION_READY: Final = "Ready"
EVENT_REASON_INVALID_SPOD: Final = "InvalidConfiguration"
# Each container of a spod pod serves its metrics and /healthz on a port of its own: they share the
# pod's network namespace (the host's, when an enricher runs). The metrics Service targets the first.
SPOD_METRICS_PORT: Final = 9443
LOG_ENRICHER_METRICS_PORT: Final = 9444
JSON_ENRICHER_METRICS_PORT: Final = 9445
# The spod's hostProcVolumePath is mounted here in the enricher containers: runc refuses bind mounts
# onto /proc, where the docs' paths (`^/proc(/.*)?$`) would go.
SPOD_HOST_PROC_MOUNT: Final = "/host/proc"
# SELinux's host directories semodule reads and writes, mounted into the spod pod with enableSelinux.
SELINUX_CONFIG_DIR: Final = "/etc/selinux"
SELINUX_STORE_DIR: Final = "/var/lib/selinux"
EVENT_REASON_UNSUPPORTED_FEATURE: Final = "UnsupportedFeature"
LOG_ENRICHER_SOURCE_BPF: Final = "bpf"  # the spod's logEnricherSource for upstream's eBPF audit source

# --- profile status, deletion protection, recording merge (reconciler) ----------------------------
CONDITION_READY: Final = "Ready"

# The node's audit daemon keeps every seccomp line of a burst (the kernel log rate-limits them): a kernel
# backlog this deep, and files large enough for a recording (real-node.md: ~34 MB in a 6 s burst).
NODE_AUDIT_BACKLOG_LIMIT: Final = 8192
NODE_AUDIT_LOG_MAX_MB: Final = 64
NODE_AUDIT_LOG_FILES: Final = 5

# --- audit attribution and the log enricher (agent/attribution.py, agent/enricher.py) ------------
# With memory optimisation the agent's pod watch sees only pods carrying this label value (docs 7.8.3).
ENABLE_RECORDING_LABEL_VALUE: Final = "true"
FIELD_SELECTOR_POD_NODE_NAME: Final = "spec.nodeName"
# pid -> container id cache (upstream: 1000 entries); entries carry the process start time.
PID_CACHE_MAX_ENTRIES: Final = 1000
# Each cached pid holds its /proc directory open: fds kept free for the rest of the agent beside them.
PID_CACHE_FD_RESERVE: Final = 512
# A gone process is attributed through at most this many generations of gone ancestors.
LINEAGE_MAX_GENERATIONS: Final = 4
CONTAINER_INDEX_MAX_ENTRIES: Final = 10000
# Events of containers whose pod is not known yet wait this long at most, this many in all: a
# container's id reaches its pod's status within seconds of its start, the rest is another runtime's
# container (never a pod's) or a pod deleted meanwhile.
BACKLOG_MAX_EVENTS: Final = 10000
BACKLOG_MAX_AGE_SECONDS: Final = 300.0
# The spod's logEnricherFilters / jsonEnricherFilters levels: Metadata emits the line, None drops it.
ENRICHER_LEVEL_METADATA: Final = "Metadata"
ENRICHER_LEVEL_NONE: Final = "None"
# The log enricher's line: `"audit" logger="log-enricher" timestamp=... type="seccomp" ...` (inventory §6.3).
LOG_ENRICHER_LOGGER: Final = "log-enricher"
LOG_ENRICHER_MESSAGE: Final = "audit"
AUDIT_TYPE_SECCOMP: Final = "seccomp"
AUDIT_TYPE_SELINUX: Final = "selinux"

# --- JSON enricher (advanced audit logging, docs 7.9) ------------------------------------------------
JSON_AUDIT_VERSION: Final = "spo/v1_alpha"  # every record's `version`
# What 0 (or no value) in the spod's jsonEnricherOptions means (upstream's defaults).
DEFAULT_AUDIT_LOG_INTERVAL_SECONDS: Final = 60
DEFAULT_AUDIT_LOG_MAX_SIZE_MB: Final = 100
# The audit log and its backups hold who ran what: readable by root only, as upstream (lumberjack) does.
AUDIT_LOG_FILE_MODE: Final = 0o600
AUDIT_LOG_DIR_MODE: Final = 0o700
# Backups are `<base>-<UTC time><ext>` beside the log, the time as lumberjack spells it (Go layout
# 2006-01-02T15-04-05.000).
AUDIT_LOG_BACKUP_TIME_FORMAT: Final = "%Y-%m-%dT%H-%M-%S"
# The files of <proc>/<pid> the enricher describes a process from.
PROC_CMDLINE: Final = "cmdline"
PROC_ENVIRON: Final = "environ"
PROC_EXE: Final = "exe"
PROC_STATUS: Final = "status"
PROC_STAT: Final = "stat"
PROC_CGROUP: Final = "cgroup"

# --- audit lines (agent/auditline.py) -------------------------------------------------------------
# Record types as auditd names them in audit.log and as the kernel numbers them in its log.
AUDIT_RECORD_SECCOMP: Final = "SECCOMP"
AUDIT_RECORD_SECCOMP_NUMBER: Final = 1326
AUDIT_RECORD_AVC: Final = "AVC"
AUDIT_RECORD_AVC_NUMBER: Final = 1400
# libseccomp names syscall numbers (Debian's libseccomp2; also in the operator image).
LIBSECCOMP_SONAME: Final = "libseccomp.so.2"
# What syscall_name() answers for a number libseccomp cannot name: `unknown-syscall(<arch>:<number>)`.
UNKNOWN_SYSCALL_PREFIX: Final = "unknown-syscall"
