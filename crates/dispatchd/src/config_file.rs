//! The configuration file (`--config dispatch.toml`), layered under the
//! environment and the command line: defaults, then the file, then
//! `DISPATCH_*` variables, then flags. Every flag has a key, its long name
//! (`offer-timeout = "5s"`; `offer_timeout` works too).
//!
//! The layering is clap's own: the file's keys become flags placed before
//! the real ones (clap lets a later flag override an earlier one), and a
//! key whose environment variable is set is left out, so the variable
//! wins. Each value therefore goes through the same parser as the flag,
//! with the same errors.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

/// Where a setting came from, for `dispatchd config --print`.
fn source_name(from_file: bool, on_command_line: bool, source: Option<ValueSource>) -> &'static str {
    match source {
        _ if on_command_line => "flag",
        Some(ValueSource::EnvVariable) => "environment",
        _ if from_file => "config file",
        Some(ValueSource::DefaultValue) => "default",
        Some(ValueSource::CommandLine) => "flag",
        _ => "unset",
    }
}

/// The file named by `--config` (or `DISPATCH_CONFIG`), if any.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut named = None;
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            named = it.next().map(PathBuf::from);
        } else if let Some(path) = arg.strip_prefix("--config=") {
            named = Some(PathBuf::from(path));
        }
    }
    named.or_else(|| std::env::var_os("DISPATCH_CONFIG").map(PathBuf::from))
}

/// The long names given on the command line.
fn given(args: &[OsString]) -> BTreeSet<String> {
    args.iter()
        .skip(1)
        .filter_map(|a| a.to_str()?.strip_prefix("--").map(|s| s.split('=').next().unwrap_or(s).to_owned()))
        .collect()
}

/// A TOML value as the flag's text; `None` for `false` (a flag left off).
fn as_flag_value(key: &str, value: &toml::Value) -> Result<Option<String>, String> {
    Ok(Some(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(true) => String::new(),
        toml::Value::Boolean(false) => return Ok(None),
        toml::Value::Array(items) => {
            let parts: Result<Vec<_>, _> =
                items.iter().map(|v| as_flag_value(key, v).map(Option::unwrap_or_default)).collect();
            parts?.join(",")
        }
        other => return Err(format!("{key}: a {} is not a setting", other.type_str())),
    }))
}

/// The settings of a file, as flags.
fn file_args(path: &Path, command: &Command) -> Result<(Vec<OsString>, BTreeSet<String>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e| format!("{}: {e}", path.display()))?;
    let mut args = Vec::new();
    let mut keys = BTreeSet::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
            .ok_or_else(|| format!("{}: unknown setting {key:?}", path.display()))?;
        // The environment beats the file.
        if arg.get_env().is_some_and(|env| std::env::var_os(env).is_some()) {
            keys.insert(long);
            continue;
        }
        let Some(text) = as_flag_value(key, value)? else { continue };
        let takes_value = arg.get_action().takes_values();
        args.push(OsString::from(if takes_value { format!("--{long}={text}") } else { format!("--{long}") }));
        keys.insert(long);
    }
    Ok((args, keys))
}

/// The command line with the file's settings put in front, and the keys
/// the file set.
pub fn layered(args: Vec<OsString>, command: &Command) -> Result<(Vec<OsString>, BTreeSet<String>), String> {
    let Some(path) = config_path(&args) else { return Ok((args, BTreeSet::new())) };
    let (from_file, keys) = file_args(&path, command)?;
    let mut all = Vec::with_capacity(args.len() + from_file.len());
    all.extend(args.first().cloned());
    all.extend(from_file);
    all.extend(args.into_iter().skip(1));
    Ok((all, keys))
}

/// The effective configuration as a TOML file (usable as `--config`), each
/// line saying where its value came from.
pub fn print(matches: &ArgMatches, command: &Command, from_file: &BTreeSet<String>, args: &[OsString]) -> String {
    let on_command_line = given(args);
    let mut out =
        String::from("# dispatchd: the effective configuration (defaults < --config file < DISPATCH_* < flags)\n");
    for arg in command.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else { continue };
        if matches!(long, "help" | "version" | "config") {
            continue;
        }
        // An earlier spelling shows only where it was used.
        if arg.is_hide_set() && matches.get_raw(id).is_none() {
            continue;
        }
        let source = source_name(from_file.contains(long), on_command_line.contains(long), matches.value_source(id));
        let line = if arg.get_action().takes_values() {
            match matches.get_raw(id) {
                Some(values) => {
                    let text: Vec<String> = values.map(|v| v.to_string_lossy().into_owned()).collect();
                    format!("{long} = {}", toml::Value::String(text.join(",")))
                }
                None => format!("# {long} = (unset)"),
            }
        } else {
            format!("{long} = {}", matches.try_get_one::<bool>(id).ok().flatten().copied().unwrap_or(false))
        };
        let deprecated = if arg.is_hide_set() { " (an earlier spelling: see the warning at start)" } else { "" };
        out.push_str(&format!("{line:<60} # {source}{deprecated}\n"));
    }
    out
}
