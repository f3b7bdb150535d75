//! The routing tree, with inherited options resolved.

use std::collections::BTreeMap;

use tenantflow_core::alerting::{RouteSpec, DEFAULT_GROUP_INTERVAL, DEFAULT_GROUP_WAIT, DEFAULT_REPEAT_INTERVAL};

use crate::matcher::{all_match, compile_all, CompiledMatcher};
use crate::AlertError;

/// How a route groups its alerts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupBy {
    /// By these labels (an empty list: one group for the route).
    Labels(Vec<String>),
    /// `...`: by all labels.
    All,
}

#[derive(Debug)]
pub(crate) struct Route {
    /// Stable identity of the route in the tree, the prefix of its groups' keys.
    pub key: String,
    pub matchers: Vec<CompiledMatcher>,
    pub receiver: String,
    pub group_by: GroupBy,
    pub group_wait: i64,
    pub group_interval: i64,
    pub repeat_interval: i64,
    pub continue_matching: bool,
    pub routes: Vec<Route>,
}

struct Inherited<'a> {
    receiver: Option<&'a str>,
    group_by: Option<&'a [String]>,
    group_wait: i64,
    group_interval: i64,
    repeat_interval: i64,
}

impl Route {
    pub fn compile(root: &RouteSpec) -> Result<Route, AlertError> {
        if root.receiver.is_none() {
            return Err(AlertError::Config("the root route needs a receiver".into()));
        }
        let top = Inherited {
            receiver: None,
            group_by: None,
            group_wait: DEFAULT_GROUP_WAIT,
            group_interval: DEFAULT_GROUP_INTERVAL,
            repeat_interval: DEFAULT_REPEAT_INTERVAL,
        };
        // The root matches every alert, whatever matchers it was given.
        compile_node(root, &top, "{}".to_string(), true)
    }

    /// The routes an alert takes, depth first: the first matching child wins unless it has
    /// `continue_matching`; a route none of whose children match takes the alert itself.
    pub fn matching<'r>(&'r self, labels: &BTreeMap<String, String>, out: &mut Vec<&'r Route>) {
        let before = out.len();
        for child in &self.routes {
            if all_match(&child.matchers, labels) {
                child.matching(labels, out);
                if !child.continue_matching {
                    break;
                }
            }
        }
        if out.len() == before {
            out.push(self);
        }
    }

    pub fn walk<'r>(&'r self, out: &mut Vec<&'r Route>) {
        out.push(self);
        for c in &self.routes {
            c.walk(out);
        }
    }

    /// The group labels of an alert on this route (labels it lacks are left out).
    pub fn group_labels(&self, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        match &self.group_by {
            GroupBy::All => labels.clone(),
            GroupBy::Labels(names) => names.iter().filter_map(|n| labels.get(n).map(|v| (n.clone(), v.clone()))).collect(),
        }
    }
}

fn compile_node(spec: &RouteSpec, parent: &Inherited<'_>, key: String, is_root: bool) -> Result<Route, AlertError> {
    let receiver = spec.receiver.as_deref().or(parent.receiver);
    let group_by = spec.group_by.as_deref().or(parent.group_by);
    let here = Inherited {
        receiver,
        group_by,
        group_wait: spec.group_wait.unwrap_or(parent.group_wait),
        group_interval: spec.group_interval.unwrap_or(parent.group_interval),
        repeat_interval: spec.repeat_interval.unwrap_or(parent.repeat_interval),
    };
    for (name, v) in [("group_wait", here.group_wait), ("group_interval", here.group_interval), ("repeat_interval", here.repeat_interval)] {
        if v < 0 || (name != "group_wait" && v == 0) {
            return Err(AlertError::Config(format!("route {key}: {name} must be positive")));
        }
    }
    let routes = spec
        .routes
        .iter()
        .enumerate()
        .map(|(i, child)| {
            let m = child.matchers.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(",");
            compile_node(child, &here, format!("{key}/{{{m}}}/{i}"), false)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let group_by = match group_by {
        Some(names) if names.iter().any(|n| n == "...") => GroupBy::All,
        Some(names) => GroupBy::Labels(names.to_vec()),
        None => GroupBy::Labels(Vec::new()),
    };
    Ok(Route {
        matchers: if is_root { Vec::new() } else { compile_all(&spec.matchers)? },
        receiver: receiver.ok_or_else(|| AlertError::Config(format!("route {key} has no receiver")))?.to_string(),
        key,
        group_by,
        group_wait: here.group_wait,
        group_interval: here.group_interval,
        repeat_interval: here.repeat_interval,
        continue_matching: spec.continue_matching,
        routes,
    })
}
