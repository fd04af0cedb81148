//! The resource verbs over the store, one file each: `read` (get, list), `create`,
//! `update` (PUT and the read-modify-write loop), `patch` (including server-side apply),
//! `delete` (one object, collections), `watch`, and the scale and binding
//! `subresources`. `meta` (stored objects as JSON) and `common` (type checks,
//! validation, responses) are what they share; other modules import from the file that
//! defines a thing, so nothing here imports back from them.

pub(crate) mod common;
pub(crate) mod create;
pub(crate) mod delete;
pub(crate) mod meta;
pub(crate) mod patch;
pub(crate) mod read;
pub(crate) mod subresources;
pub(crate) mod update;
pub(crate) mod watch;
