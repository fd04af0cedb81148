//! Kubernetes' list and patch metadata (`patchStrategy` / `patchMergeKey` / `listType` /
//! `listMapKey` tags of the upstream Go types), for the types reachable from the served
//! kinds. This table is the one source both the OpenAPI documents (which kubectl reads to
//! compute strategic merge patches) and the server's strategic merge patch use.

/// Patch and list metadata of one field of one schema.
pub struct FieldMeta {
    /// Canonical schema name, `io.k8s.api.core.v1.PodSpec`.
    pub schema: &'static str,
    /// JSON field name.
    pub field: &'static str,
    /// `x-kubernetes-patch-strategy`: "merge", "merge,retainKeys", "retainKeys".
    pub strategy: Option<&'static str>,
    /// `x-kubernetes-patch-merge-key`.
    pub merge_key: Option<&'static str>,
    /// `x-kubernetes-list-type`: "atomic", "set", "map".
    pub list_type: Option<&'static str>,
    /// `x-kubernetes-list-map-keys` (with list type "map").
    pub map_keys: &'static [&'static str],
}

const fn merge(
    schema: &'static str,
    field: &'static str,
    key: &'static str,
    strategy: &'static str,
    map_keys: &'static [&'static str],
) -> FieldMeta {
    FieldMeta {
        schema,
        field,
        strategy: Some(strategy),
        merge_key: Some(key),
        list_type: Some("map"),
        map_keys,
    }
}

const fn atomic(schema: &'static str, field: &'static str) -> FieldMeta {
    FieldMeta {
        schema,
        field,
        strategy: None,
        merge_key: None,
        list_type: Some("atomic"),
        map_keys: &[],
    }
}

const fn merge_set(schema: &'static str, field: &'static str) -> FieldMeta {
    FieldMeta {
        schema,
        field,
        strategy: Some("merge"),
        merge_key: None,
        list_type: Some("set"),
        map_keys: &[],
    }
}

const POD_SPEC: &str = "io.k8s.api.core.v1.PodSpec";
const POD_STATUS: &str = "io.k8s.api.core.v1.PodStatus";
const CONTAINER: &str = "io.k8s.api.core.v1.Container";
const EPHEMERAL: &str = "io.k8s.api.core.v1.EphemeralContainer";
const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const SERVICE_SPEC: &str = "io.k8s.api.core.v1.ServiceSpec";
const NODE_SPEC: &str = "io.k8s.api.core.v1.NodeSpec";
const NODE_STATUS: &str = "io.k8s.api.core.v1.NodeStatus";

/// Every field with patch or list metadata, as upstream's OpenAPI marks it.
pub static FIELDS: &[FieldMeta] = &[
    // PodSpec
    merge(POD_SPEC, "volumes", "name", "merge,retainKeys", &["name"]),
    merge(POD_SPEC, "initContainers", "name", "merge", &["name"]),
    merge(POD_SPEC, "containers", "name", "merge", &["name"]),
    merge(POD_SPEC, "ephemeralContainers", "name", "merge", &["name"]),
    merge(POD_SPEC, "imagePullSecrets", "name", "merge", &["name"]),
    merge(POD_SPEC, "hostAliases", "ip", "merge", &["ip"]),
    merge(
        POD_SPEC,
        "topologySpreadConstraints",
        "topologyKey",
        "merge",
        &["topologyKey", "whenUnsatisfiable"],
    ),
    merge(
        POD_SPEC,
        "resourceClaims",
        "name",
        "merge,retainKeys",
        &["name"],
    ),
    merge(POD_SPEC, "schedulingGates", "name", "merge", &["name"]),
    atomic(POD_SPEC, "tolerations"),
    atomic(POD_SPEC, "readinessGates"),
    // Container and EphemeralContainer
    merge(
        CONTAINER,
        "ports",
        "containerPort",
        "merge",
        &["containerPort", "protocol"],
    ),
    merge(CONTAINER, "env", "name", "merge", &["name"]),
    merge(
        CONTAINER,
        "volumeMounts",
        "mountPath",
        "merge",
        &["mountPath"],
    ),
    merge(
        CONTAINER,
        "volumeDevices",
        "devicePath",
        "merge",
        &["devicePath"],
    ),
    atomic(CONTAINER, "command"),
    atomic(CONTAINER, "args"),
    atomic(CONTAINER, "envFrom"),
    atomic(CONTAINER, "resizePolicy"),
    merge(
        EPHEMERAL,
        "ports",
        "containerPort",
        "merge",
        &["containerPort", "protocol"],
    ),
    merge(EPHEMERAL, "env", "name", "merge", &["name"]),
    merge(
        EPHEMERAL,
        "volumeMounts",
        "mountPath",
        "merge",
        &["mountPath"],
    ),
    merge(
        EPHEMERAL,
        "volumeDevices",
        "devicePath",
        "merge",
        &["devicePath"],
    ),
    atomic(EPHEMERAL, "command"),
    atomic(EPHEMERAL, "args"),
    atomic(EPHEMERAL, "envFrom"),
    atomic(EPHEMERAL, "resizePolicy"),
    // PodStatus
    merge(POD_STATUS, "conditions", "type", "merge", &["type"]),
    merge(POD_STATUS, "podIPs", "ip", "merge", &["ip"]),
    FieldMeta {
        schema: POD_STATUS,
        field: "hostIPs",
        strategy: Some("merge"),
        merge_key: Some("ip"),
        list_type: Some("atomic"),
        map_keys: &[],
    },
    merge(
        POD_STATUS,
        "resourceClaimStatuses",
        "name",
        "merge,retainKeys",
        &["name"],
    ),
    atomic(POD_STATUS, "containerStatuses"),
    atomic(POD_STATUS, "initContainerStatuses"),
    atomic(POD_STATUS, "ephemeralContainerStatuses"),
    // ObjectMeta
    merge_set(META, "finalizers"),
    merge(META, "ownerReferences", "uid", "merge", &["uid"]),
    atomic(META, "managedFields"),
    // Service
    merge(
        SERVICE_SPEC,
        "ports",
        "port",
        "merge",
        &["port", "protocol"],
    ),
    atomic(SERVICE_SPEC, "clusterIPs"),
    atomic(SERVICE_SPEC, "externalIPs"),
    atomic(SERVICE_SPEC, "ipFamilies"),
    atomic(SERVICE_SPEC, "loadBalancerSourceRanges"),
    merge(
        "io.k8s.api.core.v1.ServiceStatus",
        "conditions",
        "type",
        "merge",
        &["type"],
    ),
    // Namespace
    merge(
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        "type",
        "merge",
        &["type"],
    ),
    atomic("io.k8s.api.core.v1.NamespaceSpec", "finalizers"),
    // Node
    merge_set(NODE_SPEC, "podCIDRs"),
    atomic(NODE_SPEC, "taints"),
    merge(NODE_STATUS, "conditions", "type", "merge", &["type"]),
    merge(NODE_STATUS, "addresses", "type", "merge", &["type"]),
    atomic(NODE_STATUS, "images"),
    atomic(NODE_STATUS, "volumesInUse"),
    atomic(NODE_STATUS, "volumesAttached"),
    // Endpoints
    atomic("io.k8s.api.core.v1.Endpoints", "subsets"),
    // apps/v1
    FieldMeta {
        schema: "io.k8s.api.apps.v1.DeploymentSpec",
        field: "strategy",
        strategy: Some("retainKeys"),
        merge_key: None,
        list_type: None,
        map_keys: &[],
    },
    merge(
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        "type",
        "merge",
        &["type"],
    ),
    merge(
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        "type",
        "merge",
        &["type"],
    ),
    // meta/v1
    atomic(
        "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
        "matchExpressions",
    ),
    atomic(
        "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelectorRequirement",
        "values",
    ),
];
