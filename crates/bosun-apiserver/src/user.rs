//! The requester, as Kubernetes' `user.Info`, and the user and group names bosun gives a
//! meaning to. A leaf: the authenticators, authorizers, audit and reviews all speak of
//! users, and none of them needs another to do so.

pub const BOOTSTRAP_PREFIX: &str = "system:bootstrap:";
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
pub const NODES: &str = "system:nodes";
pub const MASTERS: &str = "system:masters";
pub const AUTHENTICATED: &str = "system:authenticated";
/// The user the admin bearer token stands for.
pub const ADMIN_USER: &str = "admin";

/// The requester, as Kubernetes' `user.Info`.
#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub(crate) fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
}
