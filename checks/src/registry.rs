//! Every check, in the order the report lists them. Adding a check: one file in `rules/`, one line here.
use crate::rules;
use crate::Check;

pub fn all() -> Vec<Box<dyn Check>> {
    vec![
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
    ]
}

pub fn find(id: &str) -> Option<Box<dyn Check>> {
    all().into_iter().find(|c| c.info().id == id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_kebab_case_and_documented() {
        let mut seen = HashSet::new();
        for c in all() {
            let info = c.info();
            assert!(seen.insert(info.id), "duplicate id {}", info.id);
            assert!(
                info.id
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch == '-'),
                "{} is not kebab-case",
                info.id
            );
            for (section, text) in [
                ("what", info.docs.what),
                ("why", info.docs.why),
                ("how", info.docs.how),
                ("example", info.docs.example),
                ("fix", info.docs.fix),
            ] {
                assert!(
                    text.len() > 20,
                    "{}: docs section {section} is too thin",
                    info.id
                );
            }
            for o in info.options {
                assert!(
                    !o.doc.is_empty(),
                    "{}: option {} lacks docs",
                    info.id,
                    o.name
                );
            }
        }
    }
}
