//! Per-request traffic split of a Service toward a canary Service (progressive delivery).
//!
//! The Rollout controller (`bosun-controllers/src/rollout`) writes
//! [`SPLIT_ANNOTATION`] on a Rollout's stable Service (or a blue/green active Service):
//!
//! ```json
//! {"canaryService": "web-canary", "weight": 20,
//!  "headerRoutes": [{"name": "testers", "match": [{"headerName": "x-canary",
//!                                                  "headerValue": {"exact": "yes"}}]}]}
//! ```
//!
//! Each HTTP request to the Service (through the node proxy or the gateway, both go through
//! [`super::Upstreams::http_call`]) goes to the canary Service's endpoints when it matches
//! a header route, else with probability `weight`/100; L4 connections are split per
//! connection by weight alone. The chosen request is counted under the canary Service in
//! the metrics, so the canary's success rate and latency are its own series.

use std::collections::BTreeMap;

use http::HeaderMap;
use serde::Deserialize;

/// The annotation on the Service whose traffic is split.
pub const SPLIT_ANNOTATION: &str = "rollouts.bosun.dev/traffic-split";

/// Where part of a Service's traffic goes instead.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Split {
    /// A Service of the same namespace with the same ports.
    pub canary_service: String,
    /// Percent of requests (0..=100) sent to the canary.
    #[serde(default)]
    pub weight: u32,
    /// Requests matching any of these go to the canary whatever the weight.
    #[serde(default)]
    pub header_routes: Vec<HeaderRoute>,
}

/// Argo Rollouts' `setHeaderRoute`: every `match` must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderRoute {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: Vec<HeaderMatch>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    pub header_name: String,
    pub header_value: HeaderValueMatch,
}

/// `exact` or `prefix` (Argo's `regex` is refused by the controller).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct HeaderValueMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
}

impl HeaderMatch {
    fn holds(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(self.header_name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(
                |v| match (&self.header_value.exact, &self.header_value.prefix) {
                    (Some(e), _) => v == e,
                    (None, Some(p)) => v.starts_with(p.as_str()),
                    (None, None) => true,
                },
            )
    }
}

impl Split {
    /// The split an annotation asks for; `Err` names what is wrong with it.
    pub fn from_annotations(ann: &BTreeMap<String, String>) -> Option<Result<Split, String>> {
        let raw = ann.get(SPLIT_ANNOTATION)?;
        Some(
            serde_json::from_str::<Split>(raw)
                .map_err(|e| format!("{SPLIT_ANNOTATION}: {e}"))
                .and_then(|s| {
                    if s.weight > 100 {
                        Err(format!("{SPLIT_ANNOTATION}: weight {} > 100", s.weight))
                    } else if s.canary_service.is_empty() {
                        Err(format!("{SPLIT_ANNOTATION}: canaryService is empty"))
                    } else {
                        Ok(s)
                    }
                }),
        )
    }

    /// Whether a request with `headers` goes to the canary; `roll` is uniform in 0..100.
    pub fn to_canary(&self, headers: Option<&HeaderMap>, roll: u32) -> bool {
        if let Some(h) = headers
            && self
                .header_routes
                .iter()
                .any(|r| !r.matches.is_empty() && r.matches.iter().all(|m| m.holds(h)))
        {
            return true;
        }
        roll < self.weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(json: &str) -> Result<Split, String> {
        let ann = BTreeMap::from([(SPLIT_ANNOTATION.to_string(), json.to_string())]);
        Split::from_annotations(&ann).unwrap()
    }

    #[test]
    fn weights_and_headers() {
        let s = split(
            r#"{"canaryService":"c","weight":20,"headerRoutes":[{"name":"t","match":[
                {"headerName":"x-canary","headerValue":{"exact":"yes"}}]}]}"#,
        )
        .unwrap();
        assert!(s.to_canary(None, 0));
        assert!(s.to_canary(None, 19));
        assert!(!s.to_canary(None, 20));
        let mut h = HeaderMap::new();
        assert!(!s.to_canary(Some(&h), 99));
        h.insert("x-canary", "yes".parse().unwrap());
        assert!(s.to_canary(Some(&h), 99));
        h.insert("x-canary", "no".parse().unwrap());
        assert!(!s.to_canary(Some(&h), 99));
        let all: u32 = (0..100).filter(|r| s.to_canary(None, *r)).count() as u32;
        assert_eq!(all, 20);
    }

    #[test]
    fn bad_annotations() {
        assert!(split(r#"{"canaryService":"c","weight":101}"#).is_err());
        assert!(split(r#"{"weight":10}"#).is_err());
        assert!(split(r#"{"canaryService":"","weight":10}"#).is_err());
        assert!(split("nope").is_err());
        assert_eq!(split(r#"{"canaryService":"c"}"#).unwrap().weight, 0);
    }
}
