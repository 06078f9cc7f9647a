//! The `trainlint` command: clap, the output files and the exit codes around the library's audit.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use trainlint::config::{self, ConfigError, Settings};
use trainlint::progress::in_ci;
use trainlint::report::{docs, graph};
use trainlint::{audit, baseline, data, model, output, report, run, security};

#[derive(Parser)]
#[command(
    name = "trainlint",
    version,
    about = "Audits a deep-learning training setup before the expensive run starts"
)]
struct Cli {
    /// When to color the output.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    color: ColorChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Format {
    Text,
    Json,
    Sarif,
    Junit,
    Github,
    Gitlab,
}

#[derive(Subcommand)]
enum Command {
    /// Run the checks on a model, a data sample and a loss log.
    Check(Box<CheckArgs>),
    /// List every check (id, group, default level, summary) with the finding kinds it reports.
    Rules {
        /// Print the list as the Markdown tables of the README's "The checks" section.
        #[arg(long)]
        markdown: bool,
    },
    /// Print the documentation of a check (with its options) or of a finding kind.
    Explain {
        /// A check id (e.g. init-std) or a finding-kind id (e.g. init-std/std-out-of-band).
        id: String,
    },
    /// Write a commented trainlint.toml with every option at its default.
    Init {
        /// Folder to write trainlint.toml into.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The TorchScript model (relative to the working directory, like every path flag).
        #[arg(long)]
        model: Option<PathBuf>,
        /// The data sample (.npz, .npy, .safetensors), relative to the working directory; its keys and
        /// a task guess are filled in.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Overwrite an existing trainlint.toml.
        #[arg(long)]
        force: bool,
    },
    /// Print the JSON Schema of the configuration (for editor completion).
    Schema {
        /// Print the configuration reference table (docs/configuration.md) instead.
        #[arg(long)]
        markdown: bool,
    },
    /// Draw the model's module graph: modules as nodes (type, output shape on the data sample), the
    /// data flowing between them, unused, shared and repeated modules marked.
    Graph(Box<GraphArgs>),
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the reference pages under docs/ from the code (`./dev docs`), or with --check say
    /// which committed pages are stale.
    #[command(hide = true)]
    Docs {
        /// The docs folder.
        #[arg(long, default_value = "docs")]
        out: PathBuf,
        /// Compare instead of writing: exit 1 and list the pages that differ.
        #[arg(long)]
        check: bool,
    },
}

#[derive(clap::Args)]
struct CheckArgs {
    /// A folder to search for trainlint.toml / pyproject.toml (upwards), or a config file.
    path: Option<PathBuf>,
    /// The TorchScript model (overrides the config).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The data sample: .npz, .npy or .safetensors.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The loss log: CSV or JSONL.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Checks or groups to run, comma-separated (ALL = every check).
    #[arg(long, value_delimiter = ',')]
    select: Option<Vec<String>>,
    /// Checks or groups to skip, comma-separated.
    #[arg(long, value_delimiter = ',')]
    ignore: Option<Vec<String>>,
    /// Exit 1 when a finding at or above this severity remains.
    #[arg(long, value_enum)]
    fail_on: Option<config::FailOn>,
    /// Exit 0 even when there are findings (input errors still exit 2).
    #[arg(long)]
    exit_zero: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    output_format: Format,
    /// Write the report to this file instead of standard output.
    #[arg(short = 'o', long = "output-file")]
    output_file: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Seed for everything random (default 0).
    #[arg(long, allow_hyphen_values = true, value_parser = parse_seed)]
    seed: Option<u64>,
    /// libtorch CPU threads (0 = the machine's cores; at most 1024).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_threads)]
    threads: Option<usize>,
    /// Seconds each check that trains may spend before it reports itself undecided (skipped, never
    /// passed); default 60, 0 = no limit.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true, value_parser = parse_budget)]
    check_budget: Option<f64>,
    /// The task: auto, image-to-image, classification, regression.
    #[arg(long)]
    task: Option<String>,
    /// The training loss: mse, l1, smooth_l1, bce, bce_with_logits, cross_entropy, nll.
    #[arg(long)]
    loss: Option<String>,
    /// Leave durations out of the report (0), so that reports compare byte for byte.
    #[arg(long)]
    no_timings: bool,
    /// Print the number of findings per check (after the report).
    #[arg(long)]
    statistics: bool,
    /// Record today's findings (check and location, with counts) in FILE.
    #[arg(long, value_name = "FILE")]
    write_baseline: Option<PathBuf>,
    /// Report only findings that FILE (from --write-baseline) does not record; list stale entries.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// No progress bars.
    #[arg(short, long)]
    quiet: bool,
    /// Also write a self-contained HTML report with plots to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Stop waiting for a check after SECONDS (0.001 to 1000000) and report it as timed out
    /// (check-failed); the other checks still run. Default: no limit, or 600 when the CI environment
    /// variable is set; 0 = no limit.
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true, value_parser = parse_timeout)]
    timeout: Option<f64>,
    /// Run the model even if its graph has side effects (file access, printing, unknown ops): only for
    /// models you trust, since a TorchScript file is code.
    #[arg(long)]
    trust_model: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum GraphFormat {
    Svg,
    Dot,
    Mermaid,
    Json,
}

#[derive(clap::Args)]
struct GraphArgs {
    /// A folder to search for trainlint.toml / pyproject.toml (upwards), or a config file.
    path: Option<PathBuf>,
    /// The TorchScript model (overrides the config).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A data sample (.npz, .npy, .safetensors) for the output shapes (overrides the config).
    #[arg(long)]
    data: Option<PathBuf>,
    /// svg (laid out here), dot (Graphviz), mermaid, or json. Default: from the -o file's extension,
    /// else dot.
    #[arg(long, value_enum)]
    format: Option<GraphFormat>,
    /// Write the graph to this file instead of standard output.
    #[arg(short = 'o', long = "output-file")]
    output_file: Option<PathBuf>,
    /// Draw every block instead of collapsing runs of identical ones (`layer1.0` … `layer1.3`).
    #[arg(long)]
    no_collapse: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Run the model even if its graph has side effects (only for models you trust).
    #[arg(long)]
    trust_model: bool,
    /// Stop drawing after SECONDS and exit with an error (as check's --timeout). Default: no limit,
    /// or 600 when the CI environment variable is set; 0 = no limit.
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout)]
    timeout: Option<f64>,
}

/// More libtorch threads than this is a typo, not a machine (and would overflow libtorch's int).
const MAX_THREADS: usize = 1024;

/// A flag's value out of its range; clap shows the message after the flag and the value.
#[derive(Debug, thiserror::Error)]
enum FlagError {
    #[error("expected a whole number of threads (0 = the machine's cores)")]
    ThreadsNotANumber,
    #[error("the number of threads must be ≥ 0 (0 = the machine's cores)")]
    NegativeThreads,
    #[error("at most {MAX_THREADS} threads")]
    TooManyThreads,
    #[error("the check budget must be 0 (no limit) or between {MIN_TIMEOUT_S} and {MAX_TIMEOUT_S} seconds")]
    Budget,
    #[error("the seed must be a non-negative whole number (0 to {})", u64::MAX)]
    Seed,
    #[error(
        "expected a number of seconds from {MIN_TIMEOUT_S} to {MAX_TIMEOUT_S:.0} (0 = no limit)"
    )]
    Timeout,
}

fn parse_threads(s: &str) -> Result<usize, FlagError> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FlagError::ThreadsNotANumber);
    }
    if s.starts_with('-') && digits.bytes().any(|b| b != b'0') {
        return Err(FlagError::NegativeThreads);
    }
    match digits.parse::<usize>() {
        Ok(n) if n <= MAX_THREADS => Ok(n),
        _ => Err(FlagError::TooManyThreads),
    }
}

/// Seconds: 0 (no limit) or within [MIN_TIMEOUT_S, MAX_TIMEOUT_S]; `-0` is 0.
fn seconds(s: &str) -> Option<f64> {
    match s.trim().parse::<f64>() {
        Ok(t) if t == 0.0 || (MIN_TIMEOUT_S..=MAX_TIMEOUT_S).contains(&t) => Some(t.abs()),
        _ => None,
    }
}

fn parse_budget(s: &str) -> Result<f64, FlagError> {
    seconds(s).ok_or(FlagError::Budget)
}

fn parse_seed(s: &str) -> Result<u64, FlagError> {
    s.parse::<u64>().map_err(|_| FlagError::Seed)
}

/// The longest --timeout: 1e6 s (11.6 days) is no limit in practice, and keeps deadlines far from
/// what `Duration` and `Instant` can hold (1e30 or 2^64 seconds overflowed them).
const MAX_TIMEOUT_S: f64 = 1e6;
/// The shortest: below a millisecond every check would time out before it starts.
const MIN_TIMEOUT_S: f64 = 1e-3;

fn parse_timeout(s: &str) -> Result<f64, FlagError> {
    seconds(s).ok_or(FlagError::Timeout)
}

/// The per-check time limit without --timeout, when the CI environment variable is set.
const CI_TIMEOUT_S: f64 = 600.0;

/// The per-check time limit: --timeout, else 600 s in CI, else none; 0 means none.
fn check_timeout(flag: Option<f64>) -> Option<std::time::Duration> {
    flag.or_else(|| in_ci().then_some(CI_TIMEOUT_S))
        .filter(|t| *t > 0.0)
        .map(std::time::Duration::from_secs_f64)
}

extern "C" {
    fn _exit(code: std::ffi::c_int) -> !;
}

/// The process's exit code. After a check timed out, its worker thread may still be inside libtorch:
/// the process then ends here, without running exit handlers and libtorch's static destructors under
/// that thread (which could crash or hang the exit). The report is written by then.
fn exit_code(code: u8) -> ExitCode {
    if run::checks_left_running() || graph::drawing_left_running() {
        output::flush_all();
        // SAFETY: _exit takes any status and ends the process at once; every stream was flushed
        // above, and nothing else waits to be written.
        unsafe { _exit(code.into()) }
    }
    ExitCode::from(code)
}

/// An error that stops the run before anything is judged: exit 2.
struct Fatal {
    message: String,
    detail: Option<String>,
}

impl Fatal {
    /// The one-line message of `e`, without a snippet.
    fn line(e: impl std::fmt::Display) -> Fatal {
        Fatal {
            message: e.to_string(),
            detail: None,
        }
    }
}

/// The errors that end a command with exit 2 as one line, each wired in here on purpose (a config
/// error adds its snippet: [`config_fatal`]).
macro_rules! fatal_from {
    ($($error:ty),* $(,)?) => {$(
        impl From<$error> for Fatal {
            fn from(e: $error) -> Self {
                Fatal::line(e)
            }
        }
    )*};
}

fatal_from!(
    CliError,
    output::OutputError,
    audit::AuditError,
    data::DataError,
    security::UntrustedModel,
    baseline::BaselineError,
    docs::DocsError,
    docs::UnknownId,
    config::init::InitError,
);

/// The commands' own refusals (exit 2).
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{} is not a folder", .0.display())]
    NotAFolder(PathBuf),
    #[error("{} exists; pass --force to overwrite it", .0.display())]
    ConfigExists(PathBuf),
    #[error("threads = {0}: at most {MAX_THREADS}")]
    TooManyThreads(usize),
    #[error("graph needs a model: pass --model MODEL.pt or set [model] path in trainlint.toml")]
    GraphNeedsModel,
    #[error("cannot draw {}: {source}", path.display())]
    CannotDraw {
        path: PathBuf,
        #[source]
        source: graph::DrawError,
    },
    #[error("cannot draw {}: timed out after {} s; raise --timeout (0 = no limit)", path.display(), trainlint_checks::finding::num(limit.as_secs_f64()))]
    DrawTimedOut {
        path: PathBuf,
        limit: std::time::Duration,
    },
}

/// The settings the flags and the config file give, or why not (exit 2).
fn resolve_settings(args: &config::Overrides) -> Result<Settings, Fatal> {
    config::resolve(args).map_err(|e| match e {
        config::ResolveError::Config(e) => config_fatal(e),
        other => Fatal::line(other),
    })
}

fn config_fatal(e: ConfigError) -> Fatal {
    Fatal {
        detail: e.render_snippet(),
        message: e.to_string(),
    }
}

fn main() -> ExitCode {
    model::keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print as clap writes them (or fail like any other output); a usage
        // error is one line and exit 2, like every other input error.
        Err(e) if !e.use_stderr() => return print_clap_help(&e),
        Err(e) => {
            let text = e.render().to_string();
            let line = text.lines().next().unwrap_or("error: invalid arguments");
            output::eprint(&format!("{}\n", report::visible(line)));
            return ExitCode::from(2);
        }
    };
    match cli.color {
        ColorChoice::Always => colored::control::set_override(true),
        ColorChoice::Never => colored::control::set_override(false),
        ColorChoice::Auto => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            colored::control::set_override(!no_color && std::io::stdout().is_terminal());
        }
    }
    let result = match cli.command {
        Command::Check(args) => check(*args),
        Command::Rules { markdown } => {
            let text = if markdown {
                docs::rules_tables(false)
            } else {
                docs::rules_table()
            };
            print(&text)
        }
        Command::Explain { id } => docs::explain(&id)
            .map_err(Fatal::from)
            .and_then(|text| print(&text)),
        Command::Init {
            dir,
            model,
            data,
            force,
        } => init(&dir, model, data, force),
        Command::Schema { markdown: true } => print(&config::reference_markdown()),
        Command::Schema { markdown: false } => print(&format!(
            "{}\n",
            serde_json::to_string_pretty(&config::json_schema()).expect("schema serialises")
        )),
        Command::Graph(args) => graph(*args),
        Command::Docs { out, check: true } => {
            let stale = docs::stale(&out);
            if stale.is_empty() {
                print("")
            } else {
                eprintln!(
                    "trainlint: the generated docs in {} are stale (run ./dev docs): {}",
                    out.display(),
                    stale.join(", ")
                );
                Ok(ExitCode::from(1))
            }
        }
        Command::Docs { out, check: false } => match docs::write(&out) {
            Ok(n) => print(&format!("wrote {n} pages under {}\n", out.display())),
            Err(e) => Err(Fatal::from(e)),
        },
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Into memory first: clap_complete panics when its writer fails.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "trainlint", &mut script);
            print(&String::from_utf8_lossy(&script))
        }
    };
    // Output lost on the way to stdout fails the command, even where it was not asked about.
    let result = result.and_then(|code| match output::stdout_failure() {
        Some(failure) => Err(Fatal::from(failure)),
        None => Ok(code),
    });
    let code = match result {
        Ok(code) => code,
        Err(f) => {
            // Messages quote file contents and model code: never raw control characters.
            output::eprint(&format!("error: {}\n", report::visible(&f.message)));
            if let Some(d) = f.detail {
                output::eprint(&format!("{}\n", report::visible(&d)));
            }
            exit_code(2)
        }
    };
    // libtorch's exit handlers and static destructors (its operator registry, thread pools), which
    // run at every exit since the library is loaded at start-up, take a noticeable share of a short
    // audit and do nothing the process needs: every output has been written and checked by now, and
    // stdout, stderr and the C streams are flushed here.
    output::flush_all();
    let status = [0u8, 1, 2]
        .into_iter()
        .find(|&c| code == ExitCode::from(c))
        .unwrap_or(2);
    // SAFETY: _exit takes any status and ends the process at once; every stream was flushed above.
    unsafe { _exit(status.into()) }
}

/// A command's whole output on stdout; exit 0, or 2 when it could not be written.
fn print(text: &str) -> Result<ExitCode, Fatal> {
    output::print(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// `--help` and `--version`, as clap renders them, through [`output::print`].
fn print_clap_help(e: &clap::Error) -> ExitCode {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let text = if std::io::stdout().is_terminal() && !no_color {
        e.render().ansi().to_string()
    } else {
        e.render().to_string()
    };
    match output::print(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            output::eprint(&format!("error: {message}\n"));
            ExitCode::from(2)
        }
    }
}

fn init(
    dir: &Path,
    model: Option<PathBuf>,
    data: Option<PathBuf>,
    force: bool,
) -> Result<ExitCode, Fatal> {
    if !dir.is_dir() {
        return Err(CliError::NotAFolder(dir.to_path_buf()).into());
    }
    let target = dir.join("trainlint.toml");
    // A link counts as there even when it dangles: writing would create its target.
    if std::fs::symlink_metadata(&target).is_ok() && !force {
        return Err(CliError::ConfigExists(target).into());
    }
    let text = config::init::starter(dir, model.as_deref(), data.as_deref())?;
    let inputs: Vec<output::Input> = [("the model", &model), ("the data", &data)]
        .into_iter()
        .filter_map(|(role, path)| path.as_deref().map(|path| output::Input { role, path }))
        .collect();
    output::replace(&target, text.as_bytes(), &inputs)?;
    print(&format!("wrote {}\n", target.display()))
}

impl CheckArgs {
    fn overrides(&self) -> config::Overrides {
        config::Overrides {
            path: self.path.clone(),
            model: self.model.clone(),
            data: self.data.clone(),
            log: self.log.clone(),
            select: self.select.clone(),
            ignore: self.ignore.clone(),
            fail_on: self.fail_on,
            device: self.device.clone(),
            seed: self.seed,
            threads: self.threads,
            check_budget: self.check_budget,
            task: self.task.clone(),
            loss: self.loss.clone(),
        }
    }
}

fn check(args: CheckArgs) -> Result<ExitCode, Fatal> {
    // Model code can print; fd 1 points to stderr until the report is written to the real stdout.
    let stdout = output::ReportStdout::capture();
    let settings = resolve_settings(&args.overrides())?;
    if settings.model.threads > MAX_THREADS {
        return Err(CliError::TooManyThreads(settings.model.threads).into());
    }
    if run::selected_checks(&settings).is_empty() {
        // ruff runs nothing, silently, on an empty selection; a gate that checks nothing deserves a word.
        output::eprint(
            "warning: no check is selected (select / --select, ignore / --ignore and the levels leave none): nothing is checked; select = [\"ALL\"] runs every check\n",
        );
    }
    let timeout = check_timeout(args.timeout);
    // Everything that can refuse the run does so before the checks run and before anything is written.
    let targets = plan_outputs(
        &[
            ("--output-file", args.output_file.as_deref()),
            ("--report", args.report.as_deref()),
            ("--write-baseline", args.write_baseline.as_deref()),
        ],
        args.baseline.as_deref(),
        &settings,
    )?;
    let target = |flag: &str| targets.iter().find(|t| t.flag == flag);
    let old_baseline = match &args.baseline {
        Some(path) => Some(baseline::read(path)?),
        None => None,
    };
    if settings.model.path.is_none() && settings.model.device != "cpu" {
        output::eprint(&format!(
            "warning: device {} is unused: only a model runs on a device, and none is given (set [model] path or pass --model)\n",
            settings.model.device
        ));
    }
    let audit = audit::audit(&audit::Request {
        settings: &settings,
        trust_model: args.trust_model,
        timeout,
        timings: !args.no_timings,
        progress: !args.quiet,
        baseline: old_baseline.as_ref(),
        write_baseline: target("--write-baseline").is_some(),
    })?;
    let report = &audit.report;
    let new_baseline = &audit.new_baseline;
    let rendered = match args.output_format {
        Format::Text => report::text::render(report),
        Format::Json => report::json::render(report),
        Format::Sarif => report::sarif::render(report),
        Format::Junit => report::junit::render(report),
        Format::Github => report::github::render(report),
        Format::Gitlab => report::gitlab::render(report),
    };
    let html = target("--report").map(|_| {
        // The graph is drawn under the checks' time limit; past it, the report says so.
        let graph = audit::report_graph(&audit, timeout);
        if let Some(graph::ReportGraph::TimedOut(limit)) = &graph {
            eprintln!(
                "warning: the model graph is not in the report: timed out after {} s (--timeout)",
                trainlint_checks::finding::num(limit.as_secs_f64())
            );
        }
        report::html::render_with_graph(report, graph.as_ref())
    });
    let mut files: Vec<(&output::Target, &[u8])> = Vec::new();
    if let Some(t) = target("--output-file") {
        files.push((t, rendered.as_bytes()));
    }
    if let (Some(t), Some(html)) = (target("--report"), &html) {
        files.push((t, html.as_bytes()));
    }
    if let (Some(t), Some((text, _))) = (target("--write-baseline"), new_baseline) {
        files.push((t, text.as_bytes()));
    }
    output::write_all(&files)?;
    if let (Some(t), Some((_, n))) = (target("--write-baseline"), new_baseline) {
        output::eprint(&format!(
            "wrote {n} finding(s) to the baseline {}\n",
            t.shown.display()
        ));
    }
    if args.output_file.is_some() {
        // The human report goes to the terminal; when the file already holds it, only its summary.
        let text = report::text::render(report);
        if args.output_format == Format::Text {
            let summary = text.trim_end().lines().last().unwrap_or_default();
            output::eprint(&format!("{summary}\n"));
        } else {
            output::eprint(&text);
        }
    } else {
        // A report that does not arrive must not let the gate pass: exit 2.
        stdout.write(rendered.as_bytes())?;
    }
    if args.statistics {
        output::eprint(&report::text::statistics(report));
    }
    if !args.exit_zero && report.fails(settings.run.fail_on.into()) {
        return Ok(exit_code(1));
    }
    Ok(exit_code(0))
}

/// The output files, checked against the inputs and each other before anything runs.
fn plan_outputs(
    files: &[(&'static str, Option<&Path>)],
    baseline: Option<&Path>,
    settings: &Settings,
) -> Result<Vec<output::Target>, Fatal> {
    let outputs: Vec<output::Output> = files
        .iter()
        .filter_map(|&(flag, path)| path.map(|path| output::Output { flag, path }))
        .collect();
    // Every file the run reads is an input: an `.npy` data file's siblings that hold the inputs
    // and targets too.
    let siblings: Vec<std::path::PathBuf> = settings
        .data
        .path
        .as_deref()
        .map(|d| data::siblings_read(d, &settings.data.inputs, &settings.data.targets))
        .unwrap_or_default();
    let mut inputs: Vec<output::Input> = [
        ("the model", settings.model.path.as_deref()),
        ("the data", settings.data.path.as_deref()),
        ("the loss log", settings.log.path.as_deref()),
        ("the config file", settings.config_path.as_deref()),
        ("the --baseline file", baseline),
    ]
    .into_iter()
    .filter_map(|(role, path)| path.map(|path| output::Input { role, path }))
    .collect();
    inputs.extend(siblings.iter().map(|path| output::Input {
        role: "a sibling .npy file the data is read from",
        path,
    }));
    Ok(output::plan(&outputs, &inputs)?)
}

/// `trainlint graph`: the model's module graph as SVG, DOT, Mermaid or JSON.
fn graph(args: GraphArgs) -> Result<ExitCode, Fatal> {
    let stdout = output::ReportStdout::capture();
    let settings = resolve_settings(&config::Overrides {
        path: args.path.clone(),
        model: args.model.clone(),
        data: args.data.clone(),
        device: args.device.clone(),
        ..config::Overrides::default()
    })?;
    let Some(model_path) = settings.model.path.clone() else {
        return Err(CliError::GraphNeedsModel.into());
    };
    let targets = plan_outputs(
        &[("--output-file", args.output_file.as_deref())],
        None,
        &settings,
    )?;
    let format = args.format.unwrap_or_else(|| {
        match args
            .output_file
            .as_deref()
            .and_then(|p| p.extension())
            .and_then(|e| e.to_str())
        {
            Some("svg") => GraphFormat::Svg,
            Some("json") => GraphFormat::Json,
            Some("mmd" | "mermaid" | "md") => GraphFormat::Mermaid,
            _ => GraphFormat::Dot,
        }
    });
    // One small forward for the shapes: more threads only spin (config `threads` still applies).
    let threads = match settings.model.threads {
        0 => 1,
        n => n.min(MAX_THREADS),
    };
    tch::set_num_threads(threads as i32);
    model::silence_libtorch_warnings();
    let model = security::load_model(
        &model_path,
        &settings.model.device,
        &settings.model.output.to_string(),
        args.trust_model,
    )?;
    let dataset = audit::load_configured_data(&settings)?;
    let cannot_draw = |source| CliError::CannotDraw {
        path: model_path.clone(),
        source,
    };
    let sample = graph::sample_of(dataset.as_ref()).map_err(cannot_draw)?;
    let no_collapse = args.no_collapse;
    // Walking and laying out the graph run under the checks' time limit (--timeout).
    let draw = move || -> Result<String, graph::DrawError> {
        let marks = audit::graph_marks(&model, &settings);
        let views = graph::views_of_sample(&model, sample.as_ref(), &marks)?;
        let view = match views.full {
            Some(full) if no_collapse => full,
            _ => views.collapsed,
        };
        Ok(match format {
            GraphFormat::Svg => view.to_svg(),
            GraphFormat::Dot => view.to_dot(),
            GraphFormat::Mermaid => view.to_mermaid(),
            GraphFormat::Json => {
                serde_json::to_string_pretty(&view).expect("the view serialises") + "\n"
            }
        })
    };
    let text =
        graph::within_limit(check_timeout(args.timeout), threads, draw).map_err(|stopped| {
            match stopped {
                graph::Stopped::TimedOut(limit) => CliError::DrawTimedOut {
                    path: model_path.clone(),
                    limit,
                },
                graph::Stopped::Failed(e) => cannot_draw(e),
            }
        })?;
    match targets.iter().find(|t| t.flag == "--output-file") {
        Some(t) => output::write_all(&[(t, text.as_bytes())])?,
        None => {
            let _ = stdout.write(text.as_bytes());
        }
    }
    Ok(ExitCode::SUCCESS)
}
