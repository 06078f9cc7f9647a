//! Every check, in the order the report lists them. Adding a check: one file in `rules/`, one line here.
use crate::rules;
use crate::{CheckFailed, Group, KindInfo, Rule, ViolationMetadata};

pub fn all() -> Vec<Box<dyn Rule>> {
    vec![
        Box::new(rules::nonfinite::Nonfinite),
        Box::new(rules::init_std::InitStd),
        Box::new(rules::identity_overfit::IdentityOverfit),
        Box::new(rules::overfit_batch::OverfitBatch),
        Box::new(rules::output_range::OutputRange),
        Box::new(rules::double_activation::DoubleActivation),
        Box::new(rules::loss_scale::LossScale),
        Box::new(rules::loss_oscillation::LossOscillation),
        Box::new(rules::sequential_data::SequentialData),
        Box::new(rules::stale_batchnorm::StaleBatchnorm),
        Box::new(rules::gradient_flow::GradientFlow),
        Box::new(rules::unused_parameters::UnusedParameters),
        Box::new(rules::shared_batchnorm::SharedBatchnorm),
        Box::new(rules::batch_independence::BatchIndependence),
        Box::new(rules::lr_sharpness::LrSharpness),
        Box::new(rules::initial_loss::InitialLoss),
        Box::new(rules::input_normalization::InputNormalization),
    ]
}

pub fn find(id: &str) -> Option<Box<dyn Rule>> {
    all().into_iter().find(|c| c.info().id == id)
}

/// Every finding kind: each check's, in registry order, then `check-failed`.
pub fn kinds() -> Vec<&'static KindInfo> {
    let mut out: Vec<&'static KindInfo> = all()
        .iter()
        .flat_map(|c| c.info().kinds.iter().copied())
        .collect();
    out.push(&CheckFailed::KIND);
    out
}

pub fn find_kind(id: &str) -> Option<&'static KindInfo> {
    kinds().into_iter().find(|k| k.id == id)
}

/// What a selector (`--select`, `--ignore`, `[run]`, `[[ignore]]`) can name.
#[derive(Clone, Copy, Debug)]
pub enum Selector {
    All,
    Group(Group),
    Check(&'static str),
    Kind(&'static KindInfo),
}

impl PartialEq for Selector {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Selector::All, Selector::All) => true,
            (Selector::Group(a), Selector::Group(b)) => a == b,
            (Selector::Check(a), Selector::Check(b)) => a == b,
            (Selector::Kind(a), Selector::Kind(b)) => a.id == b.id,
            _ => false,
        }
    }
}

impl Selector {
    pub fn parse(s: &str) -> Option<Selector> {
        if s == "ALL" {
            return Some(Selector::All);
        }
        if let Some(g) = Group::ALL.iter().find(|g| g.as_str() == s) {
            return Some(Selector::Group(*g));
        }
        if let Some(c) = all().iter().find(|c| c.info().id == s) {
            return Some(Selector::Check(c.info().id));
        }
        find_kind(s).map(Selector::Kind)
    }

    /// Every word a selector may be, for "did you mean" hints.
    pub fn vocabulary() -> Vec<&'static str> {
        let mut words = vec!["ALL"];
        words.extend(Group::ALL.iter().map(|g| g.as_str()));
        words.extend(all().iter().map(|c| c.info().id));
        words.extend(kinds().iter().map(|k| k.id));
        words
    }

    /// Whether the selector names the whole check (or more), not just some of its kinds.
    pub fn covers_check(self, check: &str, group: Group) -> bool {
        match self {
            Selector::All => true,
            Selector::Group(g) => g == group,
            Selector::Check(c) => c == check,
            Selector::Kind(_) => false,
        }
    }

    /// Whether the selector names this finding kind (directly, or through its check or group).
    /// `check-failed` belongs to every check.
    pub fn covers_kind(self, kind: &str, check: &str, group: Group) -> bool {
        match self {
            Selector::Kind(k) => k.id == kind,
            other => other.covers_check(check, group),
        }
    }

    /// Whether the check must run for this selector to see any of its findings.
    pub fn touches_check(self, check: &str, group: Group) -> bool {
        match self {
            Selector::Kind(k) => k.check() == check || k.id == CheckFailed::KIND.id,
            other => other.covers_check(check, group),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Grade, Severity};
    use std::collections::HashSet;

    fn kebab(s: &str) -> bool {
        !s.is_empty()
            && s.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
    }

    #[test]
    fn check_and_kind_ids_are_unique_kebab_case_and_documented() {
        let mut seen = HashSet::new();
        for c in all() {
            let info = c.info();
            assert!(seen.insert(info.id), "duplicate id {}", info.id);
            assert!(kebab(info.id), "{} is not kebab-case", info.id);
            assert!(
                info.docs.what.len() > 20 && info.docs.why.len() > 20,
                "{}: thin docs",
                info.id
            );
            assert!(!info.kinds.is_empty(), "{} reports no kind", info.id);
            for k in info.kinds {
                assert!(seen.insert(k.id), "duplicate kind {}", k.id);
                let (check, name) = k.id.split_once('/').expect("kind ids are check/kind");
                assert_eq!(check, info.id, "kind {} is listed by {}", k.id, info.id);
                assert!(kebab(name), "{} is not kebab-case", k.id);
                for (section, text) in [
                    ("summary", k.summary),
                    ("why", k.why),
                    ("how", k.how),
                    ("fix", k.fix),
                ] {
                    assert!(
                        text.len() > 20,
                        "{}: docs section {section} is too thin",
                        k.id
                    );
                }
                if let Some(example) = k.example {
                    assert!(
                        !example.args.is_empty() && !example.message.is_empty(),
                        "{}",
                        k.id
                    );
                    // `explain` shows the grade beside the example: the example's severity must be
                    // one the grade gives (tests/kinds.rs runs the example and compares it).
                    let possible = match k.grade {
                        Grade::Fixed(s) => vec![s],
                        Grade::Past { below, above, .. } => vec![below, above],
                    };
                    assert!(possible.contains(&example.severity), "{}", k.id);
                }
                // A threshold the grade names is one of the check's options.
                if let Grade::Past { option, .. } = k.grade {
                    assert!(
                        c.default_options().get(option).is_some(),
                        "{}: grade names `{option}`, not an option of {}",
                        k.id,
                        info.id
                    );
                }
            }
        }
    }

    #[test]
    fn a_graded_kind_raises_past_its_threshold_only() {
        let g = Grade::Past {
            below: Severity::Warning,
            above: Severity::Error,
            option: "error_ratio",
        };
        assert_eq!(g.of(1000.0, 1000.0), Severity::Warning);
        assert_eq!(g.of(1000.5, 1000.0), Severity::Error);
        assert_eq!(g.base(), Severity::Warning);
        assert_eq!(g.describe(), "warning, error past `error_ratio`");
        let f = Grade::Fixed(Severity::Error);
        assert_eq!(f.of(0.0, 1.0), Severity::Error);
        assert_eq!(f.describe(), "error");
    }

    #[test]
    fn every_option_is_documented_and_its_schema_default_is_the_code_default() {
        for c in all() {
            let schema = c.options_schema();
            let defaults = c.default_options();
            let props = schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            assert_eq!(
                schema["additionalProperties"],
                false,
                "{}: unknown keys must be rejected",
                c.info().id
            );
            for (name, prop) in &props {
                let doc = prop["description"].as_str().unwrap_or("");
                assert!(doc.len() > 5, "{}: option {name} lacks docs", c.info().id);
                assert_eq!(
                    prop["default"],
                    defaults[name],
                    "{}: option {name}",
                    c.info().id
                );
            }
            let declared: HashSet<&String> = props.keys().collect();
            let defaulted: HashSet<&String> = defaults.as_object().unwrap().keys().collect();
            assert_eq!(declared, defaulted, "{}", c.info().id);
            c.validate_options(&serde_json::json!({})).unwrap();
        }
    }

    #[test]
    fn selectors_name_groups_checks_and_kinds() {
        assert_eq!(Selector::parse("ALL"), Some(Selector::All));
        assert_eq!(
            Selector::parse("model"),
            Some(Selector::Group(Group::Model))
        );
        assert_eq!(
            Selector::parse("init-std"),
            Some(Selector::Check("init-std"))
        );
        let k = Selector::parse("stale-batchnorm/never-updated").unwrap();
        assert!(k.touches_check("stale-batchnorm", Group::Batchnorm));
        assert!(!k.covers_check("stale-batchnorm", Group::Batchnorm));
        assert!(k.covers_kind(
            "stale-batchnorm/never-updated",
            "stale-batchnorm",
            Group::Batchnorm
        ));
        assert!(!k.covers_kind(
            "stale-batchnorm/will-not-update",
            "stale-batchnorm",
            Group::Batchnorm
        ));
        assert_eq!(Selector::parse("nope"), None);
    }
}
