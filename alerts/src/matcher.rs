//! Label matchers compiled once.

use std::collections::BTreeMap;

use regex_lite::Regex;
use tenantflow_core::alerting::{MatchOp, Matcher};

use crate::AlertError;

/// A [`Matcher`] with its regular expression compiled (anchored: it matches the whole value).
/// A missing label matches as the empty string, as in Alertmanager.
#[derive(Debug, Clone)]
pub struct CompiledMatcher {
    pub matcher: Matcher,
    regex: Option<Regex>,
}

impl CompiledMatcher {
    pub fn new(matcher: &Matcher) -> Result<CompiledMatcher, AlertError> {
        let regex = match matcher.op {
            MatchOp::Re | MatchOp::NotRe => Some(
                Regex::new(&format!("^(?:{})$", matcher.value))
                    .map_err(|e| AlertError::Config(format!("invalid regular expression in `{matcher}`: {e}")))?,
            ),
            MatchOp::Eq | MatchOp::Ne => None,
        };
        Ok(CompiledMatcher { matcher: matcher.clone(), regex })
    }

    /// Whether a label value (`""` when the label is missing) matches.
    pub fn matches_value(&self, value: &str) -> bool {
        match (self.matcher.op, &self.regex) {
            (MatchOp::Eq, _) => value == self.matcher.value,
            (MatchOp::Ne, _) => value != self.matcher.value,
            (MatchOp::Re, Some(r)) => r.is_match(value),
            (MatchOp::NotRe, Some(r)) => !r.is_match(value),
            (MatchOp::Re | MatchOp::NotRe, None) => false,
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_value(labels.get(&self.matcher.name).map_or("", String::as_str))
    }
}

pub(crate) fn compile_all(matchers: &[Matcher]) -> Result<Vec<CompiledMatcher>, AlertError> {
    matchers.iter().map(CompiledMatcher::new).collect()
}

/// All match (an empty list matches everything).
pub(crate) fn all_match(matchers: &[CompiledMatcher], labels: &BTreeMap<String, String>) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn m(text: &str) -> CompiledMatcher {
        CompiledMatcher::new(&Matcher::parse(text).expect("parse")).expect("compile")
    }

    #[test]
    fn operators_and_missing_labels() {
        let l = labels(&[("severity", "critical"), ("tenant", "acme-eu")]);
        assert!(m("severity=critical").matches(&l));
        assert!(!m("severity!=critical").matches(&l));
        assert!(m("tenant=~acme.*").matches(&l));
        // Anchored: a partial match is no match.
        assert!(!m("tenant=~acme").matches(&l));
        assert!(m("tenant!~acme").matches(&l));
        // A missing label is the empty string.
        assert!(m("team=\"\"").matches(&l));
        assert!(m("team!=ops").matches(&l));
        assert!(m("team=~\"|ops\"").matches(&l));
        assert!(!m("team=~\".+\"").matches(&l));
    }

    #[test]
    fn bad_regex_is_a_config_error() {
        let bad = Matcher { name: "a".into(), op: MatchOp::Re, value: "(".into() };
        assert!(matches!(CompiledMatcher::new(&bad), Err(AlertError::Config(_))));
    }
}
