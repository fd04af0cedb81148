//! Binds pending pods to nodes: filter and score plugins.
