//! The docs stay true: every flag and variable `docs/operations.md` names
//! is one `dispatchd --help` lists and every one it lists is documented,
//! and every relative link in README.md, `docs/` and `examples/` resolves
//! (the file, and the heading when it names one).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `--flag` `dispatchd --help` lists, with its `DISPATCH_*` variable.
fn from_help() -> BTreeSet<(String, String)> {
    let help = Command::new(env!("CARGO_BIN_EXE_dispatchd")).arg("--help").output();
    let help = String::from_utf8_lossy(&help.unwrap_or_else(|e| panic!("{e}")).stdout).into_owned();
    let mut flags = BTreeSet::new();
    let mut current: Option<String> = None;
    for line in help.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("--") {
            current = rest.split([' ', '=', ',']).next().map(str::to_owned);
        } else if let Some(env) = line.strip_prefix("[env: ")
            && let Some(flag) = current.take()
        {
            flags.insert((flag, env.split('=').next().unwrap_or_default().to_owned()));
        }
    }
    flags
}

/// Every flag row of the tables under "`dispatchd` flags" in
/// docs/operations.md, with its variable.
fn from_docs() -> BTreeSet<(String, String)> {
    let text = read(&root().join("docs/operations.md"));
    let start = text.find("## `dispatchd` flags").unwrap_or_else(|| panic!("no flags section"));
    let section = &text[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut flags = BTreeSet::new();
    for row in section[..end].lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let flag = cells[1].trim_matches('`').trim_start_matches("--").to_owned();
        let env = cells[2].trim_matches('`').to_owned();
        flags.insert((flag, env));
    }
    flags
}

#[test]
fn every_flag_in_help_is_documented_and_every_documented_flag_exists() {
    let (help, docs) = (from_help(), from_docs());
    assert!(help.len() > 40, "{help:?}");
    let undocumented: Vec<_> = help.difference(&docs).collect();
    let unknown: Vec<_> = docs.difference(&help).collect();
    assert!(undocumented.is_empty(), "in --help but not in docs/operations.md (flag, env): {undocumented:?}");
    assert!(unknown.is_empty(), "in docs/operations.md but not in --help (flag, env): {unknown:?}");
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The lines of `markdown` outside code blocks.
fn prose(markdown: &str) -> Vec<&str> {
    let mut fenced = false;
    markdown
        .lines()
        .filter(|line| {
            if line.starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    prose(markdown).iter().filter(|l| l.starts_with('#')).map(|l| slug(l.trim_start_matches('#'))).collect()
}

/// The targets of `[text](target)` links outside code blocks.
fn links(markdown: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in prose(markdown) {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(close) = after.find(')') else { break };
            found.push(after[..close].to_owned());
            rest = &after[close..];
        }
    }
    found
}

#[test]
fn every_relative_link_resolves() {
    let root = root();
    let mut pages = vec![root.join("README.md"), root.join("examples/README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap_or_else(|e| panic!("docs/: {e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    assert!(pages.len() >= 11, "README, examples and the nine docs: {pages:?}");
    let mut checked = 0;
    for page in &pages {
        let text = read(page);
        for link in links(&text) {
            if link.starts_with("http://") || link.starts_with("https://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = link.split_once('#').map_or((link.as_str(), None), |(f, a)| (f, Some(a)));
            let target = if file.is_empty() { page.clone() } else { page.parent().unwrap_or(&root).join(file) };
            assert!(
                target.exists(),
                "{}: the link {link:?} names {} which is not there",
                page.display(),
                target.display()
            );
            if let Some(anchor) = anchor.filter(|_| target.extension().is_some_and(|e| e == "md")) {
                let headings = anchors(&read(&target));
                assert!(headings.contains(anchor), "{}: no heading #{anchor} in {}", page.display(), target.display());
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} links");
}

#[test]
fn the_readme_is_a_front_door() {
    let readme = read(&root().join("README.md"));
    let lines = readme.lines().count();
    assert!(lines <= 300, "README.md has {lines} lines; the rest belongs in docs/");
    for doc in [
        "api",
        "operations",
        "architecture",
        "durability",
        "security",
        "cluster",
        "performance",
        "quality",
        "decisions",
    ] {
        assert!(readme.contains(&format!("(docs/{doc}.md)")), "README.md does not link docs/{doc}.md");
    }
}
