//! What a module's type says about normalisation, decided here once for the checks, the sample
//! warnings and the graph view. PyTorch's classes and the user's own classes named after them
//! (`SyncBatchNorm`, `LazyBatchNorm2d`, `LlamaRMSNorm`) are known by the family in their name.

/// The normalisation a module kind performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// BatchNorm1d/2d/3d, SyncBatchNorm, LazyBatchNorm…: the batch's statistics in training, and
    /// running ones tracked for eval mode.
    Batch,
    /// torchvision's FrozenBatchNorm2d: fixed statistics held as buffers, an affine map.
    FrozenBatch,
    Group,
    Instance,
    Layer,
    Rms,
    /// LocalResponseNorm: divides by a local sum of squares plus a constant, not by the input's
    /// scale.
    LocalResponse,
}

impl Norm {
    /// The normalisation of a module kind (`BatchNorm2d`), if it is one.
    pub fn of(kind: &str) -> Option<Norm> {
        const FAMILIES: [(&str, Norm); 6] = [
            ("BatchNorm", Norm::Batch),
            ("GroupNorm", Norm::Group),
            ("InstanceNorm", Norm::Instance),
            ("LayerNorm", Norm::Layer),
            ("RMSNorm", Norm::Rms),
            ("LocalResponseNorm", Norm::LocalResponse),
        ];
        let (_, norm) = FAMILIES.iter().find(|(name, _)| kind.contains(name))?;
        Some(match norm {
            Norm::Batch if kind.starts_with("Frozen") => Norm::FrozenBatch,
            other => *other,
        })
    }

    /// Normalises with the batch's statistics in training and tracks running ones: what
    /// stale-batchnorm and shared-batchnorm judge, and why one sample cannot train it.
    pub fn uses_batch_statistics(self) -> bool {
        self == Norm::Batch
    }

    /// Holds running statistics as buffers (BatchNorm, and FrozenBatchNorm's fixed ones).
    pub fn holds_running_statistics(self) -> bool {
        matches!(self, Norm::Batch | Norm::FrozenBatch)
    }

    /// Divides by its input's scale, so the weights before it are scale-invariant (init-std).
    pub fn scale_invariant(self) -> bool {
        matches!(
            self,
            Norm::Batch | Norm::Group | Norm::Instance | Norm::Layer | Norm::Rms
        )
    }

    /// Normalises each channel over the batch or the positions (not each sample over its
    /// features, as LayerNorm and RMSNorm do): lr-sharpness's scale-invariant first layers.
    pub fn normalises_features(self) -> bool {
        matches!(self, Norm::Batch | Norm::Group | Norm::Instance)
    }
}

#[cfg(test)]
mod tests {
    use super::Norm;

    #[test]
    fn module_kinds_are_known_by_their_family() {
        for (kind, norm) in [
            ("BatchNorm2d", Some(Norm::Batch)),
            ("SyncBatchNorm", Some(Norm::Batch)),
            ("LazyBatchNorm1d", Some(Norm::Batch)),
            ("FrozenBatchNorm2d", Some(Norm::FrozenBatch)),
            ("GroupNorm", Some(Norm::Group)),
            ("InstanceNorm2d", Some(Norm::Instance)),
            ("LayerNorm", Some(Norm::Layer)),
            ("LlamaRMSNorm", Some(Norm::Rms)),
            ("LocalResponseNorm", Some(Norm::LocalResponse)),
            ("Conv2d", None),
            ("Linear", None),
        ] {
            assert_eq!(Norm::of(kind), norm, "{kind}");
        }
        assert!(!Norm::FrozenBatch.uses_batch_statistics());
        assert!(Norm::FrozenBatch.holds_running_statistics());
        assert!(!Norm::FrozenBatch.scale_invariant());
        assert!(!Norm::LocalResponse.scale_invariant());
        assert!(Norm::Layer.scale_invariant() && !Norm::Layer.normalises_features());
    }
}
