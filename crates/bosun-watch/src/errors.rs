//! Reading the API's error answers.

/// The HTTP status of an error the API server answered with, if it answered.
pub fn kube_status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

pub fn is_not_found(e: &kube::Error) -> bool {
    kube_status_code(e) == Some(404)
}

/// Someone else wrote first (resourceVersion or uid precondition failed).
pub fn is_conflict(e: &kube::Error) -> bool {
    kube_status_code(e) == Some(409)
}
