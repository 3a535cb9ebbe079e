//! Mutation testing for rtq's Lua protocol: makes one small change at a time
//! to the scripts under `core/lua` (an operator flipped, a write command
//! dropped, a constant shifted by one) and runs the tests against each
//! changed copy. A mutant the tests do not notice ("survived") points at
//! protocol behaviour no test pins down.
//!
//! The code under test reads the mutated copy through `RTQ_LUA_DIR` (rtq-core
//! built with the `lua-dir-override` feature). Run it through
//! `scripts/mutate-lua.sh`; see TESTING.md.
//!
//! # Layout
//! - `mutate_lua/lexer.rs`: a Lua tokenizer that keeps comments and strings
//!   apart from code, so they are never mutated.
//! - `mutate_lua/mutants.rs`: the mutant generator and its tests.
//! - `mutate_lua/runner.rs`: one run of the test command against one mutant,
//!   in a private copy of the directory, under a timeout.
//! - this file: command line, selection (`--file`, `--only`, `--quick`),
//!   the parallel loop, and the report.

#[path = "mutate_lua/lexer.rs"]
mod lexer;
#[path = "mutate_lua/mutants.rs"]
mod mutants;
#[path = "mutate_lua/runner.rs"]
mod runner;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;

use mutants::{mutants_of, Mutant, MutationKind};
use runner::{Outcome, RunSettings};

/// The tests run against each mutant unless `--command` says otherwise.
const DEFAULT_COMMAND: &str = "cargo test -p rtq-core --features lua-dir-override --tests -q";

/// Mutation testing for rtq's Lua scripts: changes one thing at a time in a
/// copy of the Lua directory and runs the tests against it with
/// RTQ_LUA_DIR=<copy>. Reports killed, survived and timed-out mutants and
/// the score caught/viable.
///
/// Exit status: 0 when the run completes (whatever the score), 1 when the
/// score is below --min-score, 2 when the tool itself fails (including a
/// baseline run that fails on the unmutated sources).
#[derive(Debug, Parser)]
#[command(name = "mutate-lua")]
struct Args {
    /// Directory of .lua files to mutate.
    #[arg(env = "RTQ_MUTATE_LUA_SOURCES", default_value = "core/lua")]
    lua_dir: PathBuf,

    /// Shell command run for each mutant, with RTQ_LUA_DIR set to the
    /// mutated copy; exit 0 means the mutant survived.
    #[arg(long, env = "RTQ_MUTATE_COMMAND", default_value = DEFAULT_COMMAND)]
    command: String,

    /// Shell command run once before any mutant, to build what --command
    /// runs. Default: for a `cargo test` command, the same command with
    /// --no-run; otherwise none. An empty string skips the build.
    #[arg(long, env = "RTQ_MUTATE_BUILD_COMMAND")]
    build_command: Option<String>,

    /// Seconds one mutant's run may take; a run past it is killed and
    /// counted as a timeout.
    #[arg(long, env = "RTQ_MUTATE_TIMEOUT", default_value_t = 300)]
    timeout: u64,

    /// Mutants run at the same time, each in its own copy.
    #[arg(long, short, env = "RTQ_MUTATE_JOBS", default_value_t = 1)]
    jobs: usize,

    /// Run only a random sample of this many mutants (see --seed).
    #[arg(long, env = "RTQ_MUTATE_QUICK")]
    quick: Option<usize>,

    /// Seed of the --quick sample, printed with every --quick run so the
    /// same sample can be drawn again. Default: from the clock.
    #[arg(long, env = "RTQ_MUTATE_SEED")]
    seed: Option<u64>,

    /// Mutate only this file (`submit.lua` or `submit`).
    #[arg(long, env = "RTQ_MUTATE_FILE")]
    file: Option<String>,

    /// Mutate only these mutant ids (as printed by --list); repeatable.
    #[arg(long, value_delimiter = ',')]
    only: Vec<usize>,

    /// Print the selected mutants and per-file counts, run nothing.
    #[arg(long)]
    list: bool,

    /// Exit 1 if the score (caught/viable, in percent) is below this.
    #[arg(long, env = "RTQ_MUTATE_MIN_SCORE")]
    min_score: Option<f64>,

    /// Skip the check that the command passes on the unmutated sources.
    #[arg(long)]
    no_baseline: bool,

    /// Directory for reports (outcomes.txt, survived.txt, timeout.txt) and
    /// one log per run (logs/<id>.log); emptied first.
    #[arg(long, env = "RTQ_MUTATE_OUT", default_value = "target/mutate-lua")]
    out: PathBuf,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("mutate-lua: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    if args.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let sources = read_sources(&args.lua_dir)?;
    let mut selected = Vec::new();
    for (file, source) in &sources {
        let first_id = selected.len();
        let found = mutants_of(file, source, first_id)
            .with_context(|| format!("cannot read {}", args.lua_dir.join(file).display()))?;
        selected.extend(found);
    }
    let all_count = selected.len();

    if let Some(name) = &args.file {
        let wanted = if name.ends_with(".lua") {
            name.clone()
        } else {
            format!("{name}.lua")
        };
        if !sources.contains_key(&wanted) {
            bail!("no file {wanted} in {}", args.lua_dir.display());
        }
        selected.retain(|m| m.file == wanted);
    }
    if !args.only.is_empty() {
        if let Some(unknown) = args.only.iter().find(|&&id| id >= all_count) {
            bail!(
                "no mutant #{unknown} (ids go from 0 to {})",
                all_count.saturating_sub(1)
            );
        }
        selected.retain(|m| args.only.contains(&m.id));
    }
    if let Some(sample_size) = args.quick {
        let seed = args.seed.unwrap_or_else(seed_from_clock);
        println!(
            "mutate-lua: --quick {sample_size} of {} mutants, seed {seed} (again: --quick {sample_size} --seed {seed})",
            selected.len()
        );
        selected = sample(selected, sample_size, seed);
    }

    if args.list {
        list(&selected, all_count);
        return Ok(ExitCode::SUCCESS);
    }
    if selected.is_empty() {
        bail!("no mutants selected");
    }
    test_mutants(&args, &sources, &selected)
}

/// Every `.lua` file directly in `dir`, by name, with its source.
fn read_sources(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut sources = BTreeMap::new();
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "lua") && path.is_file() {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let source = fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            sources.insert(name, source);
        }
    }
    if sources.is_empty() {
        bail!("no .lua files in {}", dir.display());
    }
    Ok(sources)
}

/// Prints the mutants, then the count per file and kind.
fn list(mutants: &[Mutant], all_count: usize) {
    for mutant in mutants {
        println!("#{:<4} {:<4} {mutant}", mutant.id, mutant.kind.tag());
    }
    let mut per_file: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for mutant in mutants {
        *per_file
            .entry(&mutant.file)
            .or_default()
            .entry(mutant.kind.tag())
            .or_default() += 1;
    }
    println!();
    for (file, kinds) in &per_file {
        let total: usize = kinds.values().sum();
        let tags = [
            MutationKind::FlipOperator,
            MutationKind::DropWriteCall,
            MutationKind::ShiftNumber,
        ]
        .map(|kind| format!("{} {}", kinds.get(kind.tag()).unwrap_or(&0), kind.tag()));
        println!("{file:<18} {total:>4} mutants ({})", tags.join(", "));
    }
    println!(
        "mutate-lua: {} mutants listed ({all_count} in all)",
        mutants.len()
    );
}

/// Builds, checks the baseline, runs every mutant and reports.
fn test_mutants(
    args: &Args,
    sources: &BTreeMap<String, String>,
    selected: &[Mutant],
) -> Result<ExitCode> {
    let log_dir = args.out.join("logs");
    let _ = fs::remove_dir_all(&args.out);
    fs::create_dir_all(&log_dir).with_context(|| format!("cannot create {}", log_dir.display()))?;
    let settings = RunSettings {
        lua_dir: args.lua_dir.clone(),
        command: args.command.clone(),
        timeout: Duration::from_secs(args.timeout),
        log_dir,
    };
    stop_children_on_interrupt();

    let build = args
        .build_command
        .clone()
        .unwrap_or_else(|| default_build_command(&args.command));
    if !build.trim().is_empty() {
        println!("mutate-lua: building once: {build}");
        let status = Command::new("sh").arg("-c").arg(&build).status()?;
        if !status.success() {
            bail!("build command failed ({status}): {build}");
        }
    }

    if args.no_baseline {
        println!("mutate-lua: baseline check skipped (--no-baseline)");
    } else {
        let (outcome, took) = runner::run(&settings, None, None)?;
        if outcome != Outcome::Survived {
            bail!(
                "the command does not pass on the unmutated sources ({}, see {}); \
                 fix that first or pass --no-baseline",
                outcome.label(),
                settings.log_dir.join("baseline.log").display()
            );
        }
        let estimate = took.as_secs_f64() * selected.len() as f64 / args.jobs as f64;
        println!(
            "mutate-lua: baseline passed in {:.1}s; {} mutants, {} jobs: about {:.0} min",
            took.as_secs_f64(),
            selected.len(),
            args.jobs,
            estimate / 60.0
        );
    }

    let started = Instant::now();
    let results = run_parallel(&settings, sources, selected, args.jobs)?;
    report(args, &results, started.elapsed())
}

/// For `cargo test ...`, the same command with `--no-run` (before any `--`);
/// for anything else, no build.
fn default_build_command(command: &str) -> String {
    let command = command.trim();
    if !command.starts_with("cargo test") {
        return String::new();
    }
    match command.find(" -- ") {
        Some(at) => format!("{} --no-run{}", &command[..at], &command[at..]),
        None => format!("{command} --no-run"),
    }
}

/// Runs the mutants on `jobs` threads and returns each with its outcome and
/// duration, in the order they finished; prints a progress line for each.
fn run_parallel<'m>(
    settings: &RunSettings,
    sources: &BTreeMap<String, String>,
    selected: &'m [Mutant],
    jobs: usize,
) -> Result<Vec<(&'m Mutant, Outcome, Duration)>> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (sender, receiver) = mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(selected.len()) {
            let sender = sender.clone();
            let (next, stop) = (&next, &stop);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(mutant) = selected.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    let source = sources.get(&mutant.file).map(String::as_str);
                    let result = runner::run(settings, Some(mutant), source);
                    if result.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    if sender.send((mutant, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);

        let mut results = Vec::with_capacity(selected.len());
        let width = selected.len().to_string().len();
        for (mutant, result) in receiver {
            let (outcome, took) =
                result.with_context(|| format!("cannot run mutant #{} ({mutant})", mutant.id))?;
            println!(
                "[{:>width$}/{}] {:<8} {:>6.1}s  #{} {mutant}",
                results.len() + 1,
                selected.len(),
                outcome.label(),
                took.as_secs_f64(),
                mutant.id,
            );
            results.push((mutant, outcome, took));
        }
        Ok(results)
    })
}

/// Writes the report files, prints survivors, timeouts and the score, and
/// picks the exit code.
fn report(
    args: &Args,
    results: &[(&Mutant, Outcome, Duration)],
    took: Duration,
) -> Result<ExitCode> {
    let mut sorted = results.to_vec();
    sorted.sort_by_key(|(mutant, _, _)| mutant.id);
    let with = |wanted: Outcome| -> Vec<String> {
        sorted
            .iter()
            .filter(|(_, outcome, _)| *outcome == wanted)
            .map(|(mutant, _, _)| mutant.to_string())
            .collect()
    };
    let survived = with(Outcome::Survived);
    let timeouts = with(Outcome::Timeout);
    let killed = with(Outcome::Killed);
    let outcomes: Vec<String> = sorted
        .iter()
        .map(|(m, outcome, took)| {
            format!(
                "#{} {} {:.1}s {m}",
                m.id,
                outcome.label(),
                took.as_secs_f64()
            )
        })
        .collect();
    for (name, lines) in [
        ("outcomes.txt", &outcomes),
        ("survived.txt", &survived),
        ("timeout.txt", &timeouts),
        ("killed.txt", &killed),
    ] {
        let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
        fs::write(args.out.join(name), text)?;
    }

    for (title, lines) in [("timeouts", &timeouts), ("survivors", &survived)] {
        if !lines.is_empty() {
            println!("\n{title}:");
            for line in lines {
                println!("  {line}");
            }
        }
    }
    let viable = results.len();
    let caught = killed.len() + timeouts.len();
    let score = if viable == 0 {
        100.0
    } else {
        100.0 * caught as f64 / viable as f64
    };
    println!(
        "\nmutate-lua: {viable} mutants in {:.0}s: {} killed, {} timeout, {} survived; reports in {}",
        took.as_secs_f64(),
        killed.len(),
        timeouts.len(),
        survived.len(),
        args.out.display()
    );
    println!("mutate-lua: score caught/viable = {caught}/{viable} = {score:.1}%");
    match args.min_score {
        Some(min) if score < min => {
            println!("mutate-lua: score {score:.1}% is below --min-score {min}%");
            Ok(ExitCode::from(1))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// On Ctrl-C, kills every running test command (each runs in a process
/// group of its own, out of the terminal's reach) before exiting.
fn stop_children_on_interrupt() {
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        if runtime.block_on(tokio::signal::ctrl_c()).is_ok() {
            runner::kill_running();
            eprintln!("\nmutate-lua: interrupted; running commands killed");
            std::process::exit(130);
        }
    });
}

fn seed_from_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.as_nanos() as u64)
        % 1_000_000
}

/// `size` mutants drawn from `mutants` by a seeded shuffle, in id order.
fn sample(mut mutants: Vec<Mutant>, size: usize, seed: u64) -> Vec<Mutant> {
    let mut rng = SplitMix64(seed);
    let size = size.min(mutants.len());
    for i in 0..size {
        let j = i + (rng.next() % (mutants.len() - i) as u64) as usize;
        mutants.swap(i, j);
    }
    mutants.truncate(size);
    mutants.sort_by_key(|m| m.id);
    mutants
}

/// A tiny seeded generator (SplitMix64), so samples are reproducible
/// without a dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_command_is_the_test_command_with_no_run() {
        assert_eq!(
            default_build_command("cargo test -p rtq-core -q"),
            "cargo test -p rtq-core -q --no-run"
        );
        assert_eq!(
            default_build_command("cargo test -p x -- --test-threads 1"),
            "cargo test -p x --no-run -- --test-threads 1"
        );
        assert_eq!(default_build_command("make check"), "");
    }

    #[test]
    fn a_sample_is_reproducible_and_in_id_order() {
        let all = mutants_of("t.lua", "x = a == 1 and b < 2 or c >= 30", 0).unwrap();
        let first = sample(all.clone(), 4, 42);
        assert_eq!(first, sample(all.clone(), 4, 42));
        assert_eq!(first.len(), 4);
        assert!(first.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(sample(all.clone(), 100, 1).len(), all.len());
    }
}
