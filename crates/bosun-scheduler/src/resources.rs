//! Resource arithmetic: what a pod requests and what a node can hold.

use std::collections::BTreeMap;

use bosun_api::validation::parse_quantity;
use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Requests in scheduler units: CPU in millicores, memory in bytes, plus pod count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub pods: i64,
}

impl Resources {
    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.pods += o.pods;
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.pods -= o.pods;
    }
}

fn quantity(map: Option<&BTreeMap<String, Quantity>>, key: &str, scale: f64) -> i64 {
    map.and_then(|m| m.get(key))
        .and_then(|q| parse_quantity(&q.0))
        .map_or(0, |v| (v * scale).ceil() as i64)
}

fn container_requests(c: &Container) -> Resources {
    let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    // Limits without requests imply requests equal to the limits (API defaulting).
    let lim = c.resources.as_ref().and_then(|r| r.limits.as_ref());
    let pick = |key: &str, scale: f64| {
        let r = quantity(req, key, scale);
        if r == 0 { quantity(lim, key, scale) } else { r }
    };
    Resources {
        milli_cpu: pick("cpu", 1000.0),
        memory: pick("memory", 1.0),
        pods: 0,
    }
}

/// Effective request of a pod: the larger of the containers' sum and any one init container,
/// plus overhead (`computePodResourceRequest`).
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources {
            pods: 1,
            ..Default::default()
        };
    };
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&container_requests(c));
    }
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c);
        sum.milli_cpu = sum.milli_cpu.max(r.milli_cpu);
        sum.memory = sum.memory.max(r.memory);
    }
    let overhead = spec.overhead.as_ref();
    sum.milli_cpu += quantity(overhead, "cpu", 1000.0);
    sum.memory += quantity(overhead, "memory", 1.0);
    sum.pods = 1;
    sum
}

/// Requests used for scoring: pods without requests count as 100m CPU and 200Mi, so that
/// best-effort pods still spread (`GetNonzeroRequests`).
pub fn nonzero_requests(pod: &Pod) -> Resources {
    let mut r = pod_requests(pod);
    if r.milli_cpu == 0 {
        r.milli_cpu = 100;
    }
    if r.memory == 0 {
        r.memory = 200 * 1024 * 1024;
    }
    r
}

/// Allocatable resources of a node (capacity when allocatable is not reported). A node that
/// reports no pod limit accepts 110, the kubelet default.
pub fn allocatable(node: &Node) -> Resources {
    let status = node.status.as_ref();
    let alloc = status
        .and_then(|s| s.allocatable.as_ref())
        .or_else(|| status.and_then(|s| s.capacity.as_ref()));
    let pods = quantity(alloc, "pods", 1.0);
    Resources {
        milli_cpu: quantity(alloc, "cpu", 1000.0),
        memory: quantity(alloc, "memory", 1.0),
        pods: if pods == 0 { 110 } else { pods },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeStatus, PodSpec, ResourceRequirements};

    fn c(cpu: &str, mem: &str) -> Container {
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some(
                    [
                        ("cpu".to_string(), Quantity(cpu.into())),
                        ("memory".to_string(), Quantity(mem.into())),
                    ]
                    .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_requests_sum_containers_and_max_init() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![c("250m", "64Mi"), c("0.5", "1Gi")],
                init_containers: Some(vec![c("2", "10Mi")]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = pod_requests(&pod);
        assert_eq!(r.milli_cpu, 2000);
        assert_eq!(r.memory, 64 * 1024 * 1024 + 1024 * 1024 * 1024);
        assert_eq!(r.pods, 1);
        let empty = Pod {
            spec: Some(PodSpec {
                containers: vec![Container::default()],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(pod_requests(&empty).milli_cpu, 0);
        assert_eq!(nonzero_requests(&empty).milli_cpu, 100);
    }

    #[test]
    fn node_allocatable_prefers_allocatable() {
        let node = Node {
            status: Some(NodeStatus {
                capacity: Some([("cpu".to_string(), Quantity("8".into()))].into()),
                allocatable: Some(
                    [
                        ("cpu".to_string(), Quantity("7500m".into())),
                        ("memory".to_string(), Quantity("2Gi".into())),
                    ]
                    .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let a = allocatable(&node);
        assert_eq!((a.milli_cpu, a.memory, a.pods), (7500, 2 << 30, 110));
    }
}
