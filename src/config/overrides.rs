//! The settings of one run: the config file found upwards from a folder, with the command line's
//! values over it ([`Overrides`]). `trainlint check`, `trainlint graph` and the in-process tests
//! resolve their settings here.
use std::path::{Path, PathBuf};

use trainlint_checks::ports::parse_choice;

use super::{discover, load_file, validate_selectors, ConfigError, FailOn, Settings};

/// What the command line says about the setup, over the config file: `check`'s flags, or the few
/// `graph` has (the rest at their defaults).
#[derive(Default)]
pub struct Overrides {
    pub path: Option<PathBuf>,
    pub model: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub select: Option<Vec<String>>,
    pub ignore: Option<Vec<String>>,
    pub fail_on: Option<FailOn>,
    pub device: Option<String>,
    pub seed: Option<u64>,
    pub threads: Option<usize>,
    pub check_budget: Option<f64>,
    pub task: Option<String>,
    pub loss: Option<String>,
}

/// Why the settings cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The config file is invalid (it carries the offending line).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A flag's value is invalid.
    #[error("{0}")]
    Flag(String),
    /// No model, data or log from the config nor the flags.
    #[error("{0}")]
    Nothing(String),
}

/// The settings of a run: the config file found from `args.path` upwards (if any), then the
/// command line's values over it. An error names the flag, or points into the config file.
pub fn resolve(args: &Overrides) -> Result<Settings, ResolveError> {
    let mut settings = Settings::default();
    let start = args.path.clone().unwrap_or_else(|| PathBuf::from("."));
    if let Some(path) = discover(&start)? {
        load_file(&path, &mut settings)?;
    }
    if let Some(m) = &args.model {
        settings.model.path = Some(m.clone());
    }
    if let Some(d) = &args.data {
        settings.data.path = Some(d.clone());
    }
    if let Some(l) = &args.log {
        settings.log.path = Some(l.clone());
    }
    if let Some(s) = &args.select {
        validate_selectors(s).map_err(|m| ResolveError::Flag(format!("--select: {m}")))?;
        settings.run.select = s.clone();
    }
    if let Some(s) = &args.ignore {
        validate_selectors(s).map_err(|m| ResolveError::Flag(format!("--ignore: {m}")))?;
        settings.run.ignore = s.clone();
    }
    if let Some(f) = args.fail_on {
        settings.run.fail_on = f;
    }
    if let Some(d) = &args.device {
        // A typo is an error even without a model; whether CUDA is there matters only with one.
        if let Err(e @ crate::model::ModelError::BadDevice(_)) = crate::model::parse_device(d) {
            return Err(ResolveError::Flag(format!("--device: {e}")));
        }
        settings.model.device = d.clone();
    }
    if let Some(s) = args.seed {
        settings.run.seed = s;
    }
    if let Some(t) = args.threads {
        settings.model.threads = t;
    }
    if let Some(b) = args.check_budget {
        settings.run.check_budget = b;
    }
    settings.run_into_setup();
    // The training keys the config left unset: the checks that train assume their defaults, and say so.
    settings.setup.assumed = ["optimizer", "lr", "batch_size", "momentum"]
        .into_iter()
        .filter(|k| !settings.key_lines.contains_key(&format!("setup.{k}")))
        .filter(|k| {
            *k != "momentum"
                || settings.setup.optimizer == trainlint_checks::ports::OptimizerKind::Sgd
        })
        .collect();
    if let Some(t) = &args.task {
        settings.setup.task =
            parse_choice(t).map_err(|e| ResolveError::Flag(format!("--task: {e}")))?;
    }
    if let Some(l) = &args.loss {
        settings.setup.loss =
            Some(parse_choice(l).map_err(|e| ResolveError::Flag(format!("--loss: {e}")))?);
    }
    if settings.model.path.is_none() && settings.data.path.is_none() && settings.log.path.is_none()
    {
        return Err(ResolveError::Nothing(nothing_to_check(
            settings.config_path.as_deref(),
        )));
    }
    Ok(settings)
}

/// No model, data or log from the config (or no config at all) nor from the flags, and the next step.
fn nothing_to_check(config: Option<&Path>) -> String {
    let (found, next) = match config {
        Some(path) => (
            format!("{} sets no model, data or log path", path.display()),
            "set [model] path, [data] path or [log] path in it (`trainlint init --force` writes a \
commented one)",
        ),
        None => (
            "no trainlint.toml or [tool.trainlint] found".to_string(),
            "run `trainlint init --model MODEL.pt --data SAMPLE.npz` to write one",
        ),
    };
    format!(
        "nothing to check: {found}, and no --model, --data or --log given; {next}, or pass --model / --data / --log"
    )
}
