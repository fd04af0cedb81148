//! Node agent: pod lifecycle over runtimes (process), pod network, probes, logs, node status.
