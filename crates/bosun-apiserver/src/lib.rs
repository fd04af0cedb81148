//! Kubernetes REST API over the store: discovery, CRUD, patch, watch, subresources, tables, OpenAPI.
