//! Progress bars on stderr for the checks that train: check name, step, current loss, ETA. Hidden
//! when stderr is not a terminal, when `CI` is set, or with `--quiet`.
use std::cell::RefCell;
use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether we run in CI: the CI environment variable is set, and not to "", "0" or "false".
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

pub struct Progress {
    enabled: bool,
    bar: RefCell<Option<(ProgressBar, &'static str)>>,
}

impl Progress {
    pub fn new(wanted: bool) -> Self {
        Progress {
            enabled: wanted && !in_ci() && std::io::stderr().is_terminal(),
            bar: RefCell::new(None),
        }
    }

    /// A check begins: a new bar for checks that train.
    pub fn start(&self, id: &'static str, trains: bool) {
        self.finish();
        if !self.enabled || !trains {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{prefix:>18} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(id);
        *self.bar.borrow_mut() = Some((bar, id));
    }

    pub fn step(&self, step: usize, total: usize, loss: f64) {
        if let Some((bar, _)) = self.bar.borrow().as_ref() {
            bar.set_length(total as u64);
            bar.set_position(step as u64);
            bar.set_message(format!("loss {}", trainlint_checks::finding::num(loss)));
        }
    }

    pub fn finish(&self) {
        if let Some((bar, _)) = self.bar.borrow_mut().take() {
            bar.finish_and_clear();
        }
    }
}
