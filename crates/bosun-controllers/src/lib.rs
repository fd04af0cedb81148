//! Reconcilers (deployment, replicaset, garbage collector, namespace, node lifecycle) on one shared runtime.
