//! trainlint as a library: [`audit::audit`] runs the checks on a resolved configuration
//! ([`config::Settings`]) and returns the report; `src/main.rs` is the command line around it.
//!
//! - `audit`: the pipeline, one function;
//! - `config`: `trainlint.toml` and its schema, resolved into settings;
//! - `model`, `data`: the adapters that read the outside world (TorchScript through the C++ shim,
//!   `.pt2` programs, data samples, loss logs), with `security` deciding what a model may run;
//! - `run`: the engine that runs the checks (`trainlint-checks`) with their time limits;
//! - `report`: the report and every rendering of it (text, JSON, SARIF, JUnit, GitHub, GitLab, HTML),
//!   the model graph (`report::graph`) and the generated docs pages (`report::docs`);
//! - `output`: writing files safely; `baseline`; `threads`, `progress`.
pub mod audit;
pub mod baseline;
pub mod config;
pub mod data;
pub mod escape;
#[cfg(test)]
mod fuzz;
pub mod model;
pub mod output;
pub mod progress;
pub mod report;
pub mod run;
pub mod security;
pub mod threads;
mod zipdir;
